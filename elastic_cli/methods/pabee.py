"""PABEE (Zhou et al., NeurIPS 2020), "BERT Loses Patience".

Training: the weighted average sum_j j * L_j / sum_j j of the exit losses (deeper exits weigh more),
one shared pooler and a linear classifier per exit. Exit rule: patience, exit once t consecutive
exits agree on the argmax (regression: change below `regression_threshold`).
"""

from elastic_cli.config import MethodConfig
from elastic_cli.methods.base import METHODS, Method


@METHODS.register("pabee")
class Pabee(Method[MethodConfig]):
    """The layer-weighted objective and the patience rule: conf/method/pabee.yaml."""
