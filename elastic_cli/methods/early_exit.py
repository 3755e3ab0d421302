"""early_exit: standard early exit, a classifier (own pooler + linear) at every exit layer, trained
jointly on the sum of the exit losses.

SWEET's "EE" baseline is this with SWEET's exits and shared pooler, i.e. `sweet` without the
stop-gradient: `method=early_exit method.head=shared_pooler method.exit_layers=[0.0833,0.3333,0.5,1.0]`.
"""

from elastic_cli.config import MethodConfig
from elastic_cli.methods.base import METHODS, Method


@METHODS.register("early_exit")
class EarlyExit(Method[MethodConfig]):
    """The sum of exit losses: conf/method/early_exit.yaml."""
