"""early_exit: standard early exit, a classifier at every exit layer trained jointly on the sum of
the exit losses (SWEET's "EE" baseline: the same as `sweet` without the stop-gradient)."""

from elastic_cli.methods.base import Method, register


@register
class EarlyExit(Method):
    name = "early_exit"
