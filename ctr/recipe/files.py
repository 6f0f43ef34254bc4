"""Reading recipe files: YAML with each key once per mapping, ``key.path=value`` overrides,
and the first difference between two raw recipes (a resumed run's against its saved one)."""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from ctr.errors import RecipeError, not_utf8


def read_yaml(path: Path) -> dict[str, Any]:
    """Loads a YAML mapping; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise RecipeError(f"{path}: cannot read recipe: {err.strerror}") from None
    except UnicodeDecodeError as err:  # a binary file, or text in another encoding
        byte = f"byte 0x{err.object[err.start]:02x} at offset {err.start}"
        raise RecipeError(f"{path}: cannot read recipe: not {err.encoding.upper()} text ({byte})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as err:
        raise RecipeError(f"{path}:{err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RecipeError(f"{where}: invalid YAML: {getattr(err, 'problem', err)}") from None
    if data is None:  # a mistake (a truncated file, the wrong path), not a wish for every default
        raise RecipeError(f"{path}: an empty recipe; name at least its data or model (e.g. model: {{name: dlrm}})")
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections")
    return data


class _DuplicateKey(Exception):
    """A mapping of a recipe file names a key twice; the message starts with its line."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``, refusing a key given twice in one mapping (YAML keeps the last one
    silently: a second ``train:`` section would drop every key of the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be given again
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            if not isinstance(key, Hashable):  # a list as a key: the base class's error
                break
            if key in first:
                raise _DuplicateKey(f"{line}: duplicate key {key!r} (first at line {first[key]})")
            first[key] = line
        return super().construct_mapping(node, deep)


def which_not_utf8(item: str, value: tuple[str, str] = ("value is", "it")) -> str | None:
    """Of a ``key=value`` item holding a byte that is not UTF-8 (``not_utf8``): the item, escaped,
    and which part holds it, its key or its value (``value``: its words, ``("values are", "them")``
    for a ``--grid`` axis); None for UTF-8 text."""
    found = not_utf8(item)
    if found is None:
        return None
    part, pronoun = ("key is", "it") if not_utf8(item.partition("=")[0]) is not None else value
    return f"'{found[0]}': its {part} not UTF-8 (byte {found[1]:#04x}); give {pronoun} in UTF-8"


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Applies ``key.path=value`` (value parsed as YAML) to the raw recipe mapping."""
    told = which_not_utf8(item)
    if told is not None:
        raise RecipeError(f"override {told}")
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise RecipeError(f"override {item!r}: expected key.path=value")
    parts = key.split(".")
    if not all(parts):  # a stray dot: "data..rows", "seed."
        raise RecipeError(f"override {item!r}: an empty key between dots; expected key.path=value")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    node = raw
    for depth, part in enumerate(parts[:-1]):
        if node.get(part) is None:  # absent, or an empty section (null): a key set in it makes it a mapping
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            raise RecipeError(f"{'.'.join(parts[: depth + 1])}: is not a section, cannot set {key}")
        node = child
    node[parts[-1]] = value


def first_difference(before: dict[str, Any], now: dict[str, Any], prefix: str = "") -> str | None:
    """The first key (dotted) whose value differs between two raw recipe mappings, with both
    values (``train.epochs: 6 before, 1 now``); None when they are equal."""
    for key in dict.fromkeys([*before, *now]):
        old, new = before.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found = first_difference(old, new, f"{prefix}{key}.")
            if found:
                return found
        elif old != new:
            return f"{prefix}{key}: {_shown(old)} before, {_shown(new)} now"
    return None


def _shown(value: Any, width: int = 60) -> str:
    """``value``'s repr, cut to ``width`` characters (a feature list can be long)."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


