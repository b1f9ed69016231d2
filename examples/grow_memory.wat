;; grow(pages) runs memory.grow and returns its result: the previous size in
;; 64 KiB pages, or -1 when the memory cannot grow that far.
(module
  (memory (export "memory") 1)
  (func (export "grow") (param $pages i32) (result i32)
    local.get $pages
    memory.grow)
  (func (export "size") (result i32)
    memory.size))
