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
import inspect
import logging
import traceback
from dataclasses import dataclass, is_dataclass
from importlib import metadata
from pathlib import PurePath
from typing import Any, Callable, Generic, TypeVar

from ctr.errors import RecipeError, did_you_mean, reason
from ctr.typed import SUPPORTED, unsupported_field, wrong_default

log = logging.getLogger(__name__)
T = TypeVar("T")


class RegistrationError(ValueError):
    """A name or config class that a registry refuses (raised while a plugin module is imported)."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object with the config dataclass that validates its recipe block."""

    name: str
    target: T
    config: type | None
    summary: str


class Registry(Generic[T]):
    """Maps names to objects (classes or factories) and their config classes.

    Built-ins are found through a name → module table and imported on the look-up of their
    name only (validating a recipe that names ``dlrm`` imports the DLRM module, not the zoo);
    installed plugins through an entry-point group, loaded when a name is not a built-in or
    when every name is listed.

    Args:
        kind: what it holds, for messages ("model", "dataset", ...).
        builtins: name → module that registers it.
        entry_point_group: installed packages may expose plugins under this group.
        config_base: ``module.Class`` that every config class must subclass (imported when a
            config is registered: ``ctr.recipe`` imports this module).
        arguments: the names of the positional arguments a target is called with; a target
            whose signature cannot take them is refused when it is registered.
    """

    def __init__(self, kind: str, builtins: dict[str, str] | None = None, entry_point_group: str | None = None,
                 config_base: str | None = None, arguments: tuple[str, ...] | None = None):
        self.kind = kind
        self._builtins = dict(builtins or {})
        self._group = entry_point_group
        self._config_base = config_base
        self._arguments = arguments
        self._entries: dict[str, Entry[T]] = {}
        self._plugins_loaded = False

    def register(self, name: str, config: type | None = None) -> Callable[[T], T]:
        """Decorator that registers ``target`` under ``name``; a RegistrationError if it cannot be."""

        def add(target: T) -> T:
            self._check_name(name, target)
            self._check_arguments(name, target)
            if config is not None:
                self._check_config(name, config)
            self._entries[name] = Entry(name, target, config, _summary(getattr(target, "__doc__", None) or ""))
            return target

        return add

    def _check_name(self, name: str, target: T) -> None:
        """Refuses ``name`` when another object holds it, naming that object's module, and a
        built-in's name outside its module. The same class defined again (a reloaded module, a
        notebook cell run twice) replaces its entry."""
        if name in self._builtins and getattr(target, "__module__", None) != self._builtins[name]:
            raise RegistrationError(f"{self.kind} {name!r} is a built-in; register yours under another name")
        held = self._entries.get(name)
        if held is None or held.target is target:
            return
        if hasattr(target, "__qualname__") and _where(held.target) == _where(target):
            return  # a class (or function) defined again: its entry is replaced
        raise RegistrationError(f"{self.kind} {name!r} is already registered by {_where(held.target)}")

    def _check_arguments(self, name: str, target: T) -> None:
        """Refuses a target that the registry's call (``arguments``) would fail on: a model's
        ``__init__(self, schema, config)`` was a TypeError traceback at its first build."""
        if self._arguments is None:
            return
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            return  # no signature to read (a builtin): the call itself tells
        try:
            signature.bind(*self._arguments)
        except TypeError:
            called = getattr(target, "__name__", type(target).__name__)
            params = ", ".join(str(p.replace(annotation=inspect.Parameter.empty)) for p in signature.parameters.values())
            raise RegistrationError(f"{self.kind} {name!r}: {called}({params}) is called as "
                                    f"{called}({', '.join(self._arguments)})") from None

    def _check_config(self, name: str, config: type) -> None:
        """Refuses a config class that is not a subclass of the registry's base config (a
        recipe's block would be checked against the wrong keys and lack the common ones), and
        one with a key of a type a recipe cannot hold (``ctr.typed.SUPPORTED``) or a default its
        type refuses (a recipe that leaves the key out would get it unchecked)."""
        if self._config_base is not None:
            module, _, base = self._config_base.rpartition(".")
            if not (isinstance(config, type) and issubclass(config, getattr(importlib.import_module(module), base))):
                raise RegistrationError(f"{self.kind} {name!r}: its config must subclass {self._config_base}")
        if not (isinstance(config, type) and is_dataclass(config)):
            raise RegistrationError(f"{self.kind} {name!r}: its config must be a dataclass")
        unread = _undecorated_key(config)
        if unread:
            raise RegistrationError(f"{self.kind} {name!r}: its config {unread[0].__name__} is not a dataclass "
                                    f"(decorate it with @dataclass): key {unread[1]!r} would not be read")
        found = unsupported_field(config)
        if found:
            key, hint = found
            raise RegistrationError(f"{self.kind} {name!r}: config key {key!r} has type {_type_name(hint)}, which a "
                                    f"recipe cannot hold; use {SUPPORTED}")
        wrong = wrong_default(config)
        if wrong:
            raise RegistrationError(f"{self.kind} {name!r}: the default of {wrong}")

    def get(self, name: str, key_path: str = "") -> Entry[T]:
        """The entry for ``name``; a RecipeError naming ``key_path`` if there is none."""
        self._find(name)
        if name not in self._entries:
            where = f"{key_path}: " if key_path else ""
            raise RecipeError(f"{where}unknown {self.kind} {name!r}{did_you_mean(name, self.names())}"
                              f" (registered: {', '.join(self.names())})")
        return self._entries[name]

    def builtin(self, name: str) -> bool:
        """Whether ``name`` is one of ctr's own entries (not a plugin's)."""
        return name in self._builtins

    def names(self) -> list[str]:
        """Every name: all built-ins and plugins are loaded."""
        for module in dict.fromkeys(self._builtins.values()):
            importlib.import_module(module)
        self._load_plugins()
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        self._find(name)
        return name in self._entries

    def _find(self, name: str) -> None:
        """Imports the module of built-in ``name``, or the plugins for any other name."""
        if name in self._entries:
            return
        if name in self._builtins:
            importlib.import_module(self._builtins[name])
        else:
            self._load_plugins()

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        if self._group:
            for point in metadata.entry_points(group=self._group):
                try:
                    point.load()
                except (Exception, SystemExit) as err:  # a broken plugin (one exiting too) must not hide the built-ins
                    log.warning("could not load %s plugin %s: %s", self.kind, point.name, _failure(err))


def import_plugins(modules: list[str], key_path: str = "plugins") -> None:
    """Imports plugin modules named in a recipe; importing them registers their entries. Any
    failure of an import (a missing module, a syntax error, a refused registration, an
    exception of the module's code, a ``sys.exit`` in it) is a RecipeError naming ``key_path[i]`` and where it failed;
    a file name (``my_models.py``) that does not import is told to give the module's name."""
    for i, name in enumerate(modules):
        try:
            importlib.import_module(name)
        except (Exception, SystemExit) as err:  # a module that exits as it is imported ended ctr with its code
            why = _failure(err)
            if isinstance(err, ModuleNotFoundError) and name.endswith(".py") and _names_itself(err, name):
                why = f"a file name; list the module's name, {PurePath(name).stem}, with its folder on PYTHONPATH"
            raise RecipeError(f"{key_path}[{i}]: cannot import plugin module {name!r}: {why}") from None


def _names_itself(err: ModuleNotFoundError, listed: str) -> bool:
    """Whether the module ``err`` misses is the listed name or a part of it (``json.py``,
    ``lib/json``), not an import inside the module ``listed`` names."""
    return err.name is not None and listed.startswith(err.name)


def _failure(err: Exception | SystemExit) -> str:
    """Why a module's import failed, after the ``file:line`` of the statement that failed
    (the innermost module-level one: a decorator, a class, an import)."""
    if isinstance(err, SyntaxError):
        return f"{err.filename}:{err.lineno}: SyntaxError: {err.msg}"
    frames = traceback.extract_tb(err.__traceback__)
    lines = [f for f in frames if f.name == "<module>" and not f.filename.startswith("<")]
    where = f"{lines[-1].filename}:{lines[-1].lineno}: " if lines else ""
    return where + reason(err, typed=not isinstance(err, (ImportError, RegistrationError)))


def _undecorated_key(config: type) -> tuple[type, str] | None:
    """A class of ``config``'s bases without its own ``@dataclass`` that declares a key, and
    that key: ``is_dataclass`` holds through a decorated base, but the key is a plain class
    attribute that a recipe's block cannot set."""
    for klass in config.__mro__:
        keys = vars(klass).get("__annotations__", {})
        if keys and "__dataclass_fields__" not in vars(klass):
            return klass, next(iter(keys))
    return None


def _where(target: object) -> str:
    """``module.QualifiedName`` of a registered object, for messages."""
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__qualname__)}"


def _type_name(hint: object) -> str:
    """``Path`` for a class, ``Literal[...]`` as typing writes it."""
    return hint.__qualname__ if isinstance(hint, type) else str(hint).removeprefix("typing.")


def _table(package: str, modules: dict[str, list[str]]) -> dict[str, str]:
    """name → ``package.module`` from module → the names it registers."""
    return {name: f"{package}.{module}" for module, names in modules.items() for name in names}


MODELS: Registry[Any] = Registry("model", _table("ctr.models", {
    "autoint": ["autoint"], "autoint_plus": ["autoint_plus"], "dcn": ["dcn"], "dcnv2": ["dcnv2"],
    "deepfm": ["deepfm"], "din": ["din"], "dlrm": ["dlrm"], "lr": ["lr"], "wdl": ["wdl"],
}), "ctr.models", "ctr.recipe.ModelConfig", ("schema", "layout", "config"))
EMBEDDINGS: Registry[Any] = Registry("embedding method", _table("ctr.embeddings", {
    "adaptemb": ["adaptemb"], "alpt": ["alpt"], "autodim": ["autodim"], "autosrh": ["autosrh"], "compo": ["compo"], "dedup": ["dedup"], "deeplight": ["deeplight"], "dhe": ["dhe"], "dnis": ["dnis"], "dpq": ["dpq"],
    "full": ["full"], "hashing": ["hash"], "mde": ["mde"], "mgqe": ["mgqe"], "optembed": ["optembed"], "pep": ["pep"], "quantize": ["int8", "int16"], "robe": ["robe"],
    "ttrec": ["ttrec"], "unified": ["unified"],
}), "ctr.embeddings", "ctr.recipe.EmbeddingConfig", ("schema", "config"))
DATASETS: Registry[Any] = Registry("dataset", _table("ctr.datasets", {
    "amazon": ["amazon"], "avazu": ["avazu"], "criteo": ["criteo"], "libsvm": ["libsvm", "ipinyou"],
    "movielens": ["movielens"], "synthetic": ["synthetic"], "tabular": ["csv", "parquet"],
}), "ctr.datasets", "ctr.recipe.DataConfig", ("config",))
OPTIMIZERS: Registry[Any] = Registry("optimizer", _table("ctr.train", {
    "optim": ["adam", "adamw", "sgd", "adagrad", "sparse_adam", "rowwise_adagrad"],
}), arguments=("params", "config"))


def _summary(doc: str, width: int = 110) -> str:
    """A docstring's first sentence, its lines joined up to the first that ends one (a
    summary cut at the first line break read "... as the VLDB 2024 benchmark's"), shortened
    to ``width`` characters at a word."""
    words = []
    for line in doc.strip().split("\n\n")[0].splitlines():
        words += line.split()
        if line.rstrip().endswith("."):
            break
    summary = " ".join(words).replace("``", "")  # reST literals read as plain words in `ctr models`
    return summary if len(summary) <= width else summary[: width - 1].rsplit(" ", 1)[0] + " …"
