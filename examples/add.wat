;; add(i32, i32) -> i32, the smallest useful core module.
(module
  (func (export "add") (param $a i32) (param $b i32) (result i32)
    local.get $a
    local.get $b
    i32.add))
