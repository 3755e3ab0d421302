"""BERxiT (Xin et al., EACL 2021).

The alternating routine (even steps the final exit's loss, odd steps every exit's) plus the
learning-to-exit module: one Linear(pooled -> 1) + sigmoid shared by all exits predicts the need to
continue, trained with MSE towards 1 - [exit is right] (tanh|z - y| for regression). Exit rule:
that score below a threshold, which also works for regression.
"""

from elastic_cli.methods.base import Method, register


@register
class Berxit(Method):
    name = "berxit"
