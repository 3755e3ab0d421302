"""ElasticBERT (Liu et al., NAACL 2022) fine-tuning for dynamic use.

The unweighted sum of the exit losses with gradient equilibrium: at every exit the gradient reaching
the hidden state is the average of what the exits that read it send back (`method.gradient_equilibrium`).
One pooler and linear classifier per exit. Exit rule: entropy (default) or patience.
Its own pretrained backbone is `backbone=elasticbert-base` (fnlp/elasticbert-base).
"""

from elastic_cli.methods.base import Method, register


@register
class ElasticBert(Method):
    name = "elasticbert"
