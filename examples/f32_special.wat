;; f32 and f64 functions whose results are not finite or not exact in decimal.
(module
  (func (export "nan_f32") (result f32)
    f32.const nan)
  (func (export "inf_f32") (result f32)
    f32.const inf)
  (func (export "neg_inf_f32") (result f32)
    f32.const -inf)
  (func (export "third_f32") (result f32)
    f32.const 1
    f32.const 3
    f32.div)
  (func (export "identity_f32") (param $x f32) (result f32)
    local.get $x)
  (func (export "identity_f64") (param $x f64) (result f64)
    local.get $x)
  (func (export "identity_i64") (param $x i64) (result i64)
    local.get $x)
  (func (export "identity_i32") (param $x i32) (result i32)
    local.get $x))
