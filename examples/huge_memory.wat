;; Declares a minimum memory of 65536 pages (4 GiB).
(module
  (memory (export "memory") 65536)
  (func (export "noop")))
