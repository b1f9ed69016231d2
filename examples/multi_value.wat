;; Functions that return several values of mixed types.
(module
  (func (export "triple") (param $x i32) (result i32 i64 f64)
    local.get $x
    local.get $x
    i64.extend_i32_s
    i64.const 4294967296
    i64.mul
    local.get $x
    f64.convert_i32_s
    f64.const 0.5
    f64.add)
  (func (export "pair") (result i64 f32)
    i64.const -9223372036854775808
    f32.const 0.1))
