"""RainChanel: a distributed task queue that runs WebAssembly modules."""

__version__ = "0.1.0"
