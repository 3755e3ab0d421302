"""Loads every plug-in before a config is composed, so that their schemas are in Hydra's ConfigStore.

The package's own methods and exit rules register their schemas as their modules are imported. Others come from `ELASTIC_PLUGINS`, a comma-separated list of importable module names: each
registers its classes with the registries (elastic_cli/registry.py) when imported, and a `conf/` folder
beside it, if any, joins the config search path (its conf/method/<name>.yaml, ...).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from elastic_cli import config
from elastic_cli.errors import UserError

PLUGINS_ENV = "ELASTIC_PLUGINS"


# the package's modules whose plug-ins store schemas (head kinds and backbone families have none, and
# importing the adapters would load transformers before `--help`); they import torch (2-3 s)
OWN_PLUGIN_MODULES = ("elastic_cli.methods", "elastic_cli.exits")


def register_configs(own: bool = True) -> list[Path]:
    """Register every schema; the conf/ folders of the outside plug-ins, for the search path. `own=False`
    leaves out the package's own plug-ins (register_own() adds them): a composition that names none of
    their schemas (the default method and rule) then needs no torch."""
    config.register_configs()
    if own:
        register_own()
    folders = []
    for name in filter(None, (n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            raise UserError(
                f"{PLUGINS_ENV} names {name!r}, which cannot be imported ({err}): put its folder on "
                "PYTHONPATH or install it"
            ) from None
        conf = Path(module.__file__ or "").parent / "conf"
        if conf.is_dir():
            folders.append(conf.resolve())
    return folders


def register_own() -> None:
    """The package's own plug-ins' schemas."""
    for module in OWN_PLUGIN_MODULES:
        importlib.import_module(module)


def searchpath_override(folders: list[Path]) -> list[str]:
    """The override that puts the plug-ins' conf/ folders on Hydra's search path, if there are any."""
    if not folders:
        return []
    return ["hydra.searchpath=[" + ",".join(f"'file://{folder}'" for folder in folders) + "]"]
