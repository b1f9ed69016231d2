;; WASI command whose _start loops forever.
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (func (export "_start")
    (loop $again
      br $again)))
