"""One small generic registry for models, embedding methods, datasets and optimizers.

Example:
    >>> from dataclasses import dataclass
    >>> from ctr.registry import Registry
    >>> THINGS = Registry("things")
    >>> @dataclass
    ... class WidgetConfig:
    ...     size: int = 3
    >>> @THINGS.register("widget", config=WidgetConfig)
    ... class Widget:
    ...     def __init__(self, config): self.config = config
    >>> THINGS.get("widget").target(WidgetConfig()).config.size
    3
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Generic, TypeVar

from ctr.errors import RecipeError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object with the config dataclass that validates its recipe block."""

    name: str
    target: T
    config: type | None
    summary: str


class Registry(Generic[T]):
    """Maps names to objects (classes or factories) and their config classes.

    Args:
        kind: what it holds, for messages ("model", "dataset", ...).
        builtin_module: module imported on first look-up; it registers the built-ins.
        entry_point_group: installed packages may expose plugins under this group.
    """

    def __init__(self, kind: str, builtin_module: str | None = None, entry_point_group: str | None = None):
        self.kind = kind
        self._builtin_module = builtin_module
        self._group = entry_point_group
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = False

    def register(self, name: str, config: type | None = None) -> Callable[[T], T]:
        """Decorator that registers ``target`` under ``name``."""

        def add(target: T) -> T:
            if name in self._entries and self._entries[name].target is not target:
                raise ValueError(f"{self.kind}: {name!r} is already registered")
            doc = (getattr(target, "__doc__", None) or "").strip().splitlines()
            self._entries[name] = Entry(name, target, config, doc[0] if doc else "")
            return target

        return add

    def get(self, name: str, key_path: str = "") -> Entry[T]:
        """The entry for ``name``; a RecipeError naming ``key_path`` if there is none."""
        self._load()
        if name not in self._entries:
            where = f"{key_path}: " if key_path else ""
            raise RecipeError(
                f"{where}unknown {self.kind} {name!r} (registered: {', '.join(self.names())})"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self._builtin_module:
            importlib.import_module(self._builtin_module)
        if self._group:
            for point in metadata.entry_points(group=self._group):
                try:
                    point.load()
                except Exception as err:  # a broken plugin must not hide the built-ins
                    log.warning("could not load %s plugin %s: %s", self.kind, point.name, err)


def import_plugins(modules: list[str], key_path: str = "plugins") -> None:
    """Imports plugin modules named in a recipe; importing them registers their entries."""
    for i, name in enumerate(modules):
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise RecipeError(f"{key_path}[{i}]: cannot import plugin module {name!r}: {err}") from None


MODELS: Registry[Any] = Registry("model", "ctr.models", "ctr.models")
EMBEDDINGS: Registry[Any] = Registry("embedding method", "ctr.embeddings", "ctr.embeddings")
DATASETS: Registry[Any] = Registry("dataset", "ctr.datasets", "ctr.datasets")
OPTIMIZERS: Registry[Any] = Registry("optimizer", "ctr.train.optim")
