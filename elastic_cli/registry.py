"""Registries of plug-ins (methods, exit rules, head kinds, backbone families), each plug-in a class that
registers itself and, when it has settings of its own, its config dataclass.

`@METHODS.register("sweet", schema=SweetConfig)` puts the class in the registry under its name and the
schema in Hydra's ConfigStore as `schema/<group>/<name>`, which the plug-in's YAML names in its defaults
list (`/schema/method/sweet@_here_`), so a typo or a wrong type in its settings fails at composition. A
name given on the command line is checked against the registry: nothing keeps a second list of names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import fields, is_dataclass
from typing import Any, Generic, TypeVar

from hydra.core.config_store import ConfigStore

from elastic_cli.errors import UserError

T = TypeVar("T")
S = TypeVar("S")


class Registry(Generic[T]):
    """Named plug-in classes of one kind. `setting` is the config key that names one (for the error
    message); `group`, when set, is where registered schemas go in the ConfigStore (`schema/<group>`)."""

    def __init__(self, kind: str, setting: str, group: str | None = None) -> None:
        self.kind = kind
        self.setting = setting
        self.group = group
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str, schema: type | None = None) -> Callable[[type[T]], type[T]]:
        """Class decorator: register the class as `name` (set as its `name`), with its config schema."""

        def add(cls: type[T]) -> type[T]:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"two {self.kind}s registered as {name!r}")
            cls.name = name  # type: ignore[attr-defined]
            if schema is not None:
                cls.schema = schema  # type: ignore[attr-defined]
                if self.group is not None:
                    ConfigStore.instance().store(group=f"schema/{self.group}", name=name, node=schema)
            self._classes[name] = cls
            return cls

        return add

    def get(self, name: str) -> type[T]:
        """The class registered as `name`, or a UserError listing the known names."""
        if name not in self._classes:
            raise UserError(f"{self.setting}={name!r} is not one of {', '.join(self.names())}")
        return self._classes[name]

    __getitem__ = get

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._classes)

    def items(self) -> list[tuple[str, type[T]]]:
        return [(name, self._classes[name]) for name in self.names()]


def as_schema(cfg: Any, schema: type[S]) -> S:
    """`cfg` as an instance of `schema`: itself when it is one already; otherwise (a plug-in named on the
    command line or in code without its YAML) a new one holding the fields the two share, the schema's
    defaults for the rest."""
    if isinstance(cfg, schema):
        return cfg
    assert is_dataclass(schema)
    names = {f.name for f in fields(schema) if f.init}
    shared = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name in names}
    return schema(**shared)
