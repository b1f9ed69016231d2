;; Imports env.foo, which no worker provides, so the server rejects it.
(module
  (import "env" "foo" (func $foo (param i32)))
  (func (export "run")
    i32.const 1
    call $foo))
