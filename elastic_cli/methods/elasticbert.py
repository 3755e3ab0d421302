"""ElasticBERT (Liu et al., NAACL 2022) fine-tuning for dynamic use.

The unweighted sum of the exit losses with gradient equilibrium: at every exit the gradient reaching
the hidden state is the average of what the exits that read it send back (`method.gradient_equilibrium`).
One pooler and linear classifier per exit. Exit rule: entropy (default) or patience.
Its own pretrained backbone is `backbone=elasticbert-base` (fnlp/elasticbert-base). Known gap:
that checkpoint has a pretrained pooler per layer; here every exit's pooler starts from the last
layer's (the hub is out of reach on the build machines, so the per-layer mapping is not written).
"""

from elastic_cli.config import MethodConfig
from elastic_cli.methods.base import METHODS, Method


@METHODS.register("elasticbert")
class ElasticBert(Method[MethodConfig]):
    """Gradient equilibrium (MethodConfig.gradient_equilibrium): conf/method/elasticbert.yaml."""
