"""static: fine-tune with the final classifier only. The baseline every method is measured against."""

from elastic_cli.config import MethodConfig
from elastic_cli.methods.base import METHODS, Method


@METHODS.register("static")
class Static(Method[MethodConfig]):
    """The final exit only: conf/method/static.yaml."""
