"""WebAssembly inspection, value conversion and sandboxed execution."""
