"""Strict conversion of plain YAML data into typed config dataclasses.

Unknown keys and wrong types fail with the key's full path, e.g.
``train.batch_size: expected int, got 'abc'``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Literal, TypeVar, Union

from ctr.errors import RecipeError, did_you_mean

T = TypeVar("T")


def parse(cls: type[T], data: Any, path: str, owner: str = "") -> T:
    """Builds dataclass ``cls`` from ``data`` (a mapping), checking every key and type.

    Args:
        cls: a dataclass type whose fields carry type hints.
        data: the mapping read from YAML (``None`` means all defaults).
        path: dotted key path of ``data`` in the recipe, used in error messages.
        owner: what chose ``cls`` (``model deepfm``), named with an unknown key: the keys
            allowed are that one's, not the section's in general.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path or 'recipe'}: expected a mapping, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise RecipeError(
            f"{_join(path, str(unknown[0]))}: unknown key{f' for {owner}' if owner else ''}"
            f"{did_you_mean(str(unknown[0]), fields)}"
            f" (allowed: {', '.join(sorted(fields))})"
        )
    values = {}
    for name, field in fields.items():
        key_path = _join(path, name)
        if name in data:
            values[name] = convert(hints[name], _with_defaults(field, data[name]), key_path)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise RecipeError(f"{key_path}: required key is missing")
    try:
        return cls(**values)
    except (ValueError, TypeError) as err:
        raise RecipeError(_located(path, fields, str(err))) from None


def _located(path: str, fields: dict, message: str) -> str:
    """A config's own check message with the key it names joined to the path: ``rows must be
    > 0`` under ``data`` reads ``data.rows: must be > 0``; other messages keep the path alone."""
    named = re.match(r"(\w+)(?:: | (?=must ))(.*)", message, re.DOTALL)
    if named and named.group(1) in fields:
        return f"{_join(path, named.group(1))}: {named.group(2)}"
    return f"{path or 'recipe'}: {message}"


def require_at_least(config: Any, minimum: int, *names: str) -> None:
    """Raises ``ValueError("<name> must be >= <minimum>, got <value>")`` for the first of
    ``names`` below ``minimum``: the recipe reader joins the name to the key's path."""
    for name in names:
        value = getattr(config, name)
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _with_defaults(field: dataclasses.Field, value: Any) -> Any:
    """A partial mapping for a field whose default is a config instance, completed with that
    instance's values: ``arch_optimizer: {lr: 0.05}`` keeps the default's optimizer name
    instead of taking the class's."""
    if field.default_factory is dataclasses.MISSING or not isinstance(value, dict):
        return value
    default = field.default_factory()
    if not dataclasses.is_dataclass(default):
        return value
    initial = {f.name: to_plain(getattr(default, f.name)) for f in dataclasses.fields(default) if f.init}
    return {**initial, **value}


def convert(hint: Any, value: Any, path: str) -> Any:
    """Checks ``value`` against type ``hint`` and converts it (e.g. int → float)."""
    origin = _origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        return _convert_union(args, value, path)
    if origin is Literal:
        if value not in args:
            raise RecipeError(f"{path}: expected one of {', '.join(map(repr, args))}, got {_show(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{path}: expected a list, got {_show(value)}")
        item = args[0] if args else Any
        converted = [convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return converted if origin is list else tuple(converted)
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{path}: expected a mapping, got {_show(value)}")
        item = args[1] if len(args) == 2 else Any
        return {str(k): convert(item, v, _join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else parse(hint, value, path)
    return _convert_scalar(hint, value, path)


def wrong_default(cls: type) -> str | None:
    """Why a default of config dataclass ``cls`` does not fit its key's type
    (``Cls.heads: expected int, got 'two'``): a recipe that leaves the key out gets it
    unchecked. A default of None passes (``hidden: list = None``, the implicit Optional of
    a key the model fills in); a nested config's defaults are checked too. None when every
    default fits."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if not field.init or field.default is None:
            continue
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            continue
        try:
            convert(hints[field.name], value, f"{cls.__name__}.{field.name}")
        except RecipeError as err:
            return str(err)
        inner = wrong_default(type(value)) if dataclasses.is_dataclass(value) else None
        if inner:
            return inner
    return None


def _origin(hint: Any) -> Any:
    """``typing.get_origin``, with a bare ``list``, ``tuple`` or ``dict`` its own origin."""
    return typing.get_origin(hint) or (hint if hint in (list, tuple, dict) else None)


SUPPORTED = ("bool, int, float, str, Any, Literal of such values, list, tuple[X, ...] and dict (str keys) of these, "
             "unions of these (X | None), config dataclasses")


def unsupported_field(cls: type, path: str = "", seen: frozenset = frozenset()) -> tuple[str, Any] | None:
    """The first key of config dataclass ``cls`` (nested configs' keys included) whose type
    ``parse`` cannot read or ``to_plain`` cannot write (a ``Path``, an ``Enum``), with the
    type at fault; None when every key's type is one of ``SUPPORTED``."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        found = _unsupported(hints[field.name], _join(path, field.name), seen | {cls}) if field.init else None
        if found:
            return found
    return None


def _unsupported(hint: Any, path: str, seen: frozenset) -> tuple[str, Any] | None:
    """``(path, the part of hint at fault)`` if ``convert`` cannot take ``hint``, else None."""
    origin, args = _origin(hint), typing.get_args(hint)
    if hint is Any or hint in (bool, int, float, str) or hint in seen:
        return None
    if origin is Literal:
        return None if all(type(v) in (bool, int, float, str, type(None)) for v in args) else (path, hint)
    if dataclasses.is_dataclass(hint):
        return unsupported_field(hint, path, seen) if isinstance(hint, type) else (path, hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
    elif origin is list or (origin is tuple and (len(args) < 2 or args[1:] == (Ellipsis,))):
        inner = list(args[:1])  # convert reads every item as the first argument: tuple[X] or tuple[X, ...]
    elif origin is dict and (not args or args[0] in (str, Any)):
        inner = list(args[1:])
    else:
        return path, hint
    return next(filter(None, (_unsupported(a, path, seen) for a in inner)), None)


def _convert_union(args: tuple, value: Any, path: str) -> Any:
    if value is None:
        if type(None) in args:
            return None
        raise RecipeError(f"{path}: a value is required, got null")
    candidates = [a for a in args if a is not type(None)]
    shaped = [c for c in candidates if _same_shape(c, value)]
    if isinstance(value, (list, dict)) and len(shaped) == 1:
        return convert(shaped[0], value, path)  # the one candidate of this shape: its errors name the inner key
    errors = []
    for candidate in candidates:
        try:
            return convert(candidate, value, path)
        except RecipeError as err:
            errors.append(err)
    if len(errors) == 1:
        raise errors[0]
    names = " or ".join(_name(c) for c in candidates)
    raise RecipeError(f"{path}: expected {names}, got {_show(value)}")


def _same_shape(hint: Any, value: Any) -> bool:
    """Whether ``hint`` takes a value of ``value``'s container kind (a list, or a mapping)."""
    origin = _origin(hint)
    if isinstance(value, list):
        return origin in (list, tuple)
    if isinstance(value, dict):
        return origin is dict or dataclasses.is_dataclass(hint)
    return False


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _convert_scalar(hint: Any, value: Any, path: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            number = float(value)  # YAML 1.1 reads 1e-5 (no dot) as a string
        if number is not None:
            if not math.isfinite(number):  # .nan passes every `x < 0` check; no setting means infinity
                raise RecipeError(f"{path}: expected a finite number, got {_show(value)}")
            return number
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported config type {hint!r} at {path}")
    raise RecipeError(f"{path}: expected {_name(hint)}, got {_show(value)}")


def to_plain(obj: Any) -> Any:
    """Turns a config dataclass (recursively) into plain YAML-able data: the keys a recipe
    may set (a field a config fixes, ``init=False``, is not one)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def _name(hint: Any) -> str:
    """How a message names a type: ``int``, a Literal's values (``'auto'``), ``list``, or
    ``mapping`` for a dict or a config class (its class name means nothing in a recipe)."""
    if typing.get_origin(hint) is Literal:
        return " or ".join(map(repr, typing.get_args(hint)))
    if dataclasses.is_dataclass(hint) or _origin(hint) is dict:
        return "mapping"
    return getattr(hint, "__name__", str(hint))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
