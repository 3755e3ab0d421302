"""`elastic STAGE [overrides...] --help`: the user's config groups and every option of the config these
overrides compose, one line each (`key=value  description`).

The descriptions are read from the schemas themselves: the `# comments` on (or just above) a dataclass
field, and for a numeric setting its range from the RANGES tables, so config.py and the plug-ins' schemas
stay the only place the text lives. The package's own plug-in modules import torch: they are imported
only when the chosen configs name one of their schemas, so the plain `--help` stays fast.
"""

from __future__ import annotations

import ast
import inspect
import io
import os
import shutil
import textwrap
import tokenize
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import is_dataclass
from enum import Enum
from typing import Any

from hydra import compose, initialize_config_dir, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.object_type import ObjectType
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from elastic_cli import config
from elastic_cli.config import Bound
from elastic_cli.errors import UserError

# the ConfigStore's groups (schemas) and Hydra's own are not the user's to pick
_HIDDEN_GROUPS = ("schema", "hydra")
# Hydra flags whose next argument is their value, not an override (`--info`'s value is optional)
_FLAGS_WITH_VALUE = frozenset(
    "--cfg -c --package -p --config-path -cp --config-name -cn --config-dir -cd".split()
)
_INFO_TOPICS = frozenset("all config defaults defaults-tree plugins searchpath".split())
_KEY_WIDTH = 34


def overrides_of(args: list[str]) -> list[str]:
    """The overrides among a stage's arguments: Hydra's flags (and their values) are not part of the config."""
    kept: list[str] = []
    flag = ""
    for arg in args:
        if flag in _FLAGS_WITH_VALUE or flag in ("--info", "-i") and arg in _INFO_TOPICS:
            flag = ""
        elif arg.startswith("-"):
            flag = arg
        else:
            kept.append(arg)
            flag = ""
    return kept


def stage_help(stage: str, what: str, config_path: str, overrides: list[str]) -> str:
    """The help of `elastic STAGE overrides... --help`; Hydra and OmegaConf errors (a wrong option or key)
    propagate for the caller to report."""
    from elastic_cli import plugins

    sweeps = [
        o.input_line for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()
    ]
    if sweeps:
        raise UserError(f"{sweeps[0]}: --help shows one composition, so give it one value")
    config.register_configs()
    # outside plug-ins are imported to find their conf/ folders; the package's own wait until needed
    outside = bool(os.environ.get(plugins.PLUGINS_ENV, "").strip(" ,"))
    searchpath = plugins.searchpath_override(plugins.register_configs()) if outside else []
    overrides = [*overrides, *searchpath]
    with _hydra(config_path, stage):
        try:
            cfg = compose(config_name=stage, overrides=overrides, return_hydra_config=True)
        except MissingConfigException:
            if outside:
                raise
            # a plug-in's schema (`/schema/method/adapler`), or a typo that the full store reports the same
            plugins.register_configs()
            cfg = compose(config_name=stage, overrides=overrides, return_hydra_config=True)
        choices = dict(cfg.hydra.runtime.choices)
        # the groups this stage composes (`elastic report` has task alone)
        groups = {g: options for g, options in _groups(stage, searchpath).items() if g in choices}
    width = max(60, min(shutil.get_terminal_size((100, 24)).columns, 120))
    lines = [
        f"usage: elastic {stage} [key=value ...] [--help] [--hydra-help] [--cfg job] [-m]",
        f"{stage}: {what}",
        "",
        "config groups (group=option; * marks this composition's choice):",
    ]
    group_width = max(len(group) for group in groups) + 4
    for group, options in groups.items():
        listed = ", ".join(f"{o}*" if o == choices.get(group) else o for o in options)
        lines += _columns(f"  {group}", listed, group_width, width)
    lines += ["", "options (key=value; the values of this composition):"]
    section = ""
    for dotted, value, description in _rows(cfg, ""):
        top = dotted.split(".")[0] if "." in dotted else ""
        if top != section:  # a blank line before each group's block
            lines.append("")
            section = top
        lines += _columns(f"  {dotted}={value}", description, _KEY_WIDTH + 2, width)
    return "\n".join(lines)


def _hydra(config_path: str, stage: str) -> AbstractContextManager[Any]:
    GlobalHydra.instance().clear()  # a Hydra app run before in this process leaves it initialised
    if config_path.startswith("pkg://"):
        return initialize_config_module(
            config_path.removeprefix("pkg://"), version_base="1.3", job_name=stage
        )
    return initialize_config_dir(config_dir=config_path, version_base="1.3", job_name=stage)


def _groups(stage: str, searchpath: list[str]) -> dict[str, list[str]]:
    """Every user group (nested ones as `method/exit`) and its options, the plug-ins' folders included."""
    loader = GlobalHydra.instance().config_loader()

    def options(group: str, kind: ObjectType) -> list[str]:
        return sorted(loader.get_group_options(group, kind, config_name=stage, overrides=searchpath))

    found: dict[str, list[str]] = {}

    def walk(parent: str) -> None:
        for name in options(parent, ObjectType.GROUP):
            group = f"{parent}/{name}" if parent else name
            if group in _HIDDEN_GROUPS:
                continue
            configs = options(group, ObjectType.CONFIG)
            if configs:
                found[group] = configs
            walk(group)

    walk("")
    return dict(sorted(found.items()))


def _columns(left: str, text: str, indent: int, width: int) -> list[str]:
    """`left` then `text` wrapped at `indent`; `text` starts on the next line when `left` is too long."""
    wrapped = textwrap.wrap(text, max(30, width - indent), break_on_hyphens=False) if text else []
    if not wrapped:
        return [left]
    if len(left) + 1 > indent:
        return [left, *(" " * indent + line for line in wrapped)]
    first, *rest = wrapped
    return [left.ljust(indent) + first, *(" " * indent + line for line in rest)]


def _rows(node: DictConfig, prefix: str) -> Iterator[tuple[str, str, str]]:
    """(dotted key, value, description) of every setting under `node`, descending into nested schemas."""
    schema = OmegaConf.get_type(node)
    comments = field_comments(schema) if isinstance(schema, type) else {}
    ranges = {key: (bound, what) for key, bound, what in getattr(schema, "RANGES", ())}
    for name in node:
        key = str(name)
        dotted = f"{prefix}{key}"
        if dotted == "hydra":
            continue
        kind = OmegaConf.get_type(node, key)  # a null or ??? node has no dataclass type
        if is_dataclass(kind) and not OmegaConf.is_missing(node, key):
            value = node[key]
            assert isinstance(value, DictConfig)
            yield from _rows(value, f"{dotted}.")
            continue
        bound, what = ranges.get(key) or _ROOT_RANGES.get(dotted) or (None, "")
        parts = [comments.get(key) or what]
        if isinstance(kind, type) and issubclass(kind, Enum):
            parts.append(_choices(kind))
        if bound is not None:
            parts.append(f"({bound.says})")
        yield dotted, _show(_value(node, key)), " ".join(p for p in parts if p)


_ROOT_RANGES: dict[str, tuple[Bound | None, str]] = {d: (bound, what) for d, bound, what in config.RANGES}


def _value(node: DictConfig, key: str) -> Any:
    """The value, resolved when it can be here; else as written (`???`, an interpolation)."""
    try:
        value = node[key]
        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
        return value
    except OmegaConfBaseException:
        raw = OmegaConf.to_container(node, resolve=False)
        assert isinstance(raw, dict)
        return raw[key]


def _show(value: Any) -> str:
    """As it would be typed on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, str):
        return value if value else "''"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _choices(enum: type[Enum]) -> str:
    """`(a | b)`, each choice with its comment in the Enum's source when it has one."""
    said = _own_comments(enum)
    return "(" + " | ".join(f"{m.name}: {said[m.name]}" if said.get(m.name) else m.name for m in enum) + ")"


def field_comments(schema: type) -> dict[str, str]:
    """Field name -> its comment in the source of `schema` or of the schema it extends (a subclass's
    comment wins; a field it redefines without one keeps its base's)."""
    found: dict[str, str] = {}
    for cls in reversed(schema.__mro__):
        if is_dataclass(cls):
            found.update({name: text for name, text in _own_comments(cls).items() if text})
    return found


_SOURCE_COMMENTS: dict[type, dict[str, str]] = {}


def _own_comments(cls: type) -> dict[str, str]:
    """The comments a class's own fields (or Enum members) carry: a block of comment lines right above
    the field (no blank line between) and the comment at the end of its line(s)."""
    if cls not in _SOURCE_COMMENTS:
        _SOURCE_COMMENTS[cls] = _read_comments(cls)
    return _SOURCE_COMMENTS[cls]


def _read_comments(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # made at run time: no source to read
        return {}
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, alone on its line)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            alone = not token.line[: token.start[1]].strip()
            comments[token.start[0]] = (token.string.lstrip("#").strip(), alone)
    tree = ast.parse(source)
    klass = tree.body[0]
    assert isinstance(klass, ast.ClassDef)
    found = {}
    for statement in klass.body:
        target: ast.expr
        if isinstance(statement, ast.AnnAssign):
            target = statement.target
        elif isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target = statement.targets[0]
        else:
            continue
        if not isinstance(target, ast.Name):
            continue
        above: list[str] = []
        line = statement.lineno - 1
        while line in comments and comments[line][1]:
            above.insert(0, comments[line][0])
            line -= 1
        end = statement.end_lineno or statement.lineno
        trailing = [comments[n][0] for n in range(statement.lineno, end + 1) if n in comments]
        found[target.id] = " ".join(above + trailing)
    return found
