"""Methods: one module each (a registered class with its config schema beside it; its defaults in
conf/method/<name>.yaml). Adding one: README.md, "Methods"."""

from elastic_cli.methods import (  # noqa: F401  (importing registers them)
    adapler,
    berxit,
    deebert,
    early_exit,
    elang,
    elasticbert,
    elbert,
    fastbert,
    multi_model,
    pabee,
    static,
    sweet,
)
from elastic_cli.methods.base import METHODS, CascadeMemberSpec, CascadeMethod, Method, build_method

__all__ = ["METHODS", "CascadeMemberSpec", "CascadeMethod", "Method", "build_method"]
