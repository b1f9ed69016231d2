;; A WASI reactor: _initialize must run before get() returns 42.
(module
  (global $value (mut i32) (i32.const 0))
  (func (export "_initialize")
    i32.const 42
    global.set $value)
  (func (export "get") (result i32)
    global.get $value))
