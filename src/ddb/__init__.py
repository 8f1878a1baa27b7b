"""ddb: Diffusion Driven Balancing (arXiv:2503.17226), a reproducible DVC implementation."""

__version__ = "0.1.0"
