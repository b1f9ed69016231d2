;; The start function loops forever, so instantiation itself never finishes.
(module
  (func $start
    (loop $again
      br $again))
  (start $start)
  (func (export "noop")))
