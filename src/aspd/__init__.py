"""aspd: Adaptive Serial-Parallel Decoding."""

__version__ = "0.1.0"
