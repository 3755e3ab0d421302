"""Methods: one module each (training objective, exit rule defaults, model shape), in a registry."""

from elastic_cli.methods import early_exit, static  # noqa: F401  (registers them)
from elastic_cli.methods.base import METHODS, Method, build_method

__all__ = ["METHODS", "Method", "build_method"]
