"""Methods: one module each (a registered class; its config schema is in elastic_cli/config.py and its
defaults in conf/method/<name>.yaml)."""

from elastic_cli.methods import (  # noqa: F401  (importing registers them)
    berxit,
    deebert,
    early_exit,
    elasticbert,
    elbert,
    fastbert,
    pabee,
    static,
    sweet,
)
from elastic_cli.methods.base import METHODS, Method, build_method

__all__ = ["METHODS", "Method", "build_method"]
