"""static: fine-tune with the final classifier only. The baseline every method is measured against."""

from elastic_cli.methods.base import Method, register


@register
class Static(Method):
    name = "static"
