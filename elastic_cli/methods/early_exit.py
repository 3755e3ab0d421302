"""early_exit: a classifier at every exit layer, trained jointly on the sum of the exit losses;
max-prob exit rule by default (conf/method/early_exit.yaml)."""

from elastic_cli.methods.base import Method, register


@register
class EarlyExit(Method):
    name = "early_exit"
