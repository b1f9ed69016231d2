;; WASI command that writes bytes which are not valid UTF-8 to stdout.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; iovec at offset 0: pointer 16, length 9
  (data (i32.const 0) "\10\00\00\00\09\00\00\00")
  (data (i32.const 16) "ok \ff\fe end")
  (func (export "_start")
    ;; fd 1 is stdout; the written byte count goes to offset 8
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
