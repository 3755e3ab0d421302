"""DeeBERT (Xin et al., ACL 2020).

Two stages: (1) fine-tune the backbone and the final classifier on the final loss only; (2) freeze
them and train the other exits ("off-ramps", each with a pooler copied from the final one) on the
sum of their losses. Exit rule: entropy of the exit's softmax below S (nats). DeeBERT's default S is
-1 (never exit); here `calibrate` chooses S on the calibration split.
"""

from elastic_cli.config import MethodConfig
from elastic_cli.methods.base import METHODS, Method


@METHODS.register("deebert")
class DeeBert(Method[MethodConfig]):
    """Two stages of MethodConfig.stages: conf/method/deebert.yaml."""
