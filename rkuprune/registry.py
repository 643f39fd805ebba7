"""A fairseq-style registry: each plug-in registers a name, a class and its dataclass config.

Registering also stores the dataclass in Hydra's ConfigStore as ``<group>/<name>_schema`` so that the
plug-in's YAML (``conf/<group>/<name>.yaml``, with ``defaults: [<name>_schema]``) is type-checked at
composition. Adding a plug-in is therefore one Python file and one YAML file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from hydra.core.config_store import ConfigStore

from rkuprune.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    cls: type[T]
    config: type | None


class Registry(Generic[T]):
    """Maps a config name to a plug-in class and its config dataclass."""

    def __init__(self, group: str) -> None:
        self.group = group
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, config: type | None = None) -> Callable[[type[T]], type[T]]:
        def wrap(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise ValueError(f"{self.group} '{name}' is registered twice")
            self._entries[name] = Entry(name, cls, config)
            if config is not None:
                ConfigStore.instance().store(group=self.group, name=f"{name}_schema", node=config)
            return cls

        return wrap

    def get(self, name: str, field: str | None = None) -> Entry[T]:
        if name not in self._entries:
            known = ", ".join(sorted(self._entries))
            raise ConfigError(field or f"{self.group}.name", f"unknown {self.group} '{name}'; choose one of: {known}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def build(self, cfg: Any, field: str | None = None, **kwargs: Any) -> T:
        """Instantiate the plug-in named by ``cfg.name`` with its typed config."""
        entry = self.get(cfg.name, field)
        return entry.cls(cfg, **kwargs)  # type: ignore[call-arg]


def import_submodules(package_name: str) -> None:
    """Import every module of a package so that their ``@register`` decorators run."""
    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package_name}.{info.name}")
