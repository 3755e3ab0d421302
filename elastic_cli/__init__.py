"""elastic: a command-line experiment runner for adaptive inference of transformer encoders."""

__version__ = "0.1.0"
