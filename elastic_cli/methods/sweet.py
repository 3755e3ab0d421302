"""SWEET (Rotem et al., ACL 2023): Separating Weights in Early-Exit Transformers.

The plain sum of exit losses, with a stop-gradient at every exit boundary: the hidden state handed
on after an exit is detached, so exit k's loss updates only the layers since exit k-1, its own
linear head and the pooler all exits share (`method.stop_gradient`, `method.head=shared_pooler`).
Max-prob exit rule with per-exit temperatures; exits at SWEET's 0_3_5_11 as fractions of the depth.

On MPNet and DeBERTa the relative-position parameters are shared by all layers (computed once per
batch), so every exit's loss still reaches them; on BERT, SWEET's backbone, the isolation is exact.
"""

from elastic_cli.config import MethodConfig
from elastic_cli.methods.base import METHODS, Method


@METHODS.register("sweet")
class Sweet(Method[MethodConfig]):
    """Its settings are switches of MethodConfig (stop_gradient, head, exit_layers): conf/method/sweet.yaml."""
