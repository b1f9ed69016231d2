;; spin() never returns, so only a timeout, fuel or an interrupt stops it.
(module
  (func (export "spin")
    (loop $again
      br $again)))
