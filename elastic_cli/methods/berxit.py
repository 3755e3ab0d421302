"""BERxiT (Xin et al., EACL 2021).

The alternating routine (even steps the final exit's loss, odd steps every exit's) plus the
learning-to-exit module: one Linear(pooled -> 1) + sigmoid shared by all exits predicts the need to
continue, trained with MSE towards 1 - [exit is right] (tanh|z - y| for regression). Exit rule:
that score below a threshold, which also works for regression.

Choices (METHODS.md section 6.4 is followed; the stored castorini/berxit versions differ): the LTE
loss is added at every step of the alternating routine rather than trained in a separate `*-lte`
run, its target is 1 - [correct] rather than the clamped entropy of some versions, and the module
reads the pooled state detached, so the LTE loss never moves the classifier's representation.
"""

from elastic_cli.config import MethodConfig
from elastic_cli.methods.base import METHODS, Method


@METHODS.register("berxit")
class Berxit(Method[MethodConfig]):
    """The alternating objective and the LTE module (MethodConfig.lte): conf/method/berxit.yaml."""
