"""``ctr tune``'s grid: its axes (``--grid key.path=v1,v2``) read into points, every
combination of their values, and what an axis may not be (a seed; a value given twice; a
mapping that replaces an earlier axis, or holds a later axis's key)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import yaml

from ctr.errors import UserError
from ctr.recipe.files import which_not_utf8


@dataclass(frozen=True)
class Point:
    """One grid point: its number and the overrides (``key.path=value``) that make it."""

    number: int
    overrides: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"p{self.number:02d}"

    @property
    def label(self) -> str:
        return " ".join(self.overrides)


def parse_grid(items: list[str]) -> list[Point]:
    """``key.path=v1,v2`` per axis (commas inside [], {} or quotes do not split) → every
    combination. ``seed`` is no axis: ``--seeds`` gives the chosen point's seeds."""
    if not items:
        raise UserError("--grid: give at least one axis, e.g. --grid model.dropout=0,0.2")
    axes = []
    for item in items:
        told = which_not_utf8(item, ("values are", "them"))
        if told is not None:
            raise UserError(f"--grid {told}")
        key, sep, text = item.partition("=")
        values = _split_top_level(text)
        if not sep or not all(key.split(".")) or not all(values):
            raise UserError(f"--grid {item!r}: expected key.path=value1,value2,... (no empty key between dots)")
        repeated = next((v for i, v in enumerate(values) if _same_value(v, values[:i])), None)
        if repeated is not None:
            raise UserError(f"--grid {item!r}: value {repeated!r} given twice (a point would train twice)")
        axes.append([f"{key}={value}" for value in values])
    keys = [axis[0].partition("=")[0] for axis in axes]
    if len(set(keys)) != len(keys):
        raise UserError(f"--grid: a key appears twice in {keys}")
    if "seed" in keys:
        raise UserError("--grid seed: a seed is no setting to choose (the luckiest would win on noise); give "
                        "--seeds N (the chosen point's seeds from the recipe's on; -o seed=S sets that)")
    _check_nesting(keys)
    _check_held_keys(axes)
    return [Point(n, combo) for n, combo in enumerate(itertools.product(*axes))]


def _check_nesting(keys: list[str]) -> None:
    """Refuses an axis whose key holds an earlier axis's (``model`` after ``model.top_mlp``):
    each point applies its axes in order, so its mapping replaced the earlier values, and the
    points that differ in them alone trained one recipe. After it, an axis below it sets a key
    inside the mapping (both take effect)."""
    for later, key in enumerate(keys):
        inside = next((earlier for earlier in keys[:later] if earlier.startswith(f"{key}.")), None)
        if inside is not None:
            raise UserError(f"--grid {key}: replaces --grid {inside}, an earlier axis, at every point (its values "
                            "would train nowhere); give that axis after it, or the value in one of them")


def _check_held_keys(axes: list[list[str]]) -> None:
    """Refuses a value of a mapping axis that holds the key of a later axis inside it
    (``model={top_mlp: [8], ...}`` before ``model.top_mlp=[4],[2]``), or is null (made a
    mapping of that key): the later axis replaces it at every point. ``axes``: each axis's
    ``key=value`` items."""
    for later, axis in enumerate(axes):
        key = axis[0].partition("=")[0]
        for earlier in axes[:later]:
            parent = earlier[0].partition("=")[0]
            inside = key.removeprefix(f"{parent}.")
            values = [item.partition("=")[2] for item in earlier]
            held = next((v for v in values if key.startswith(f"{parent}.") and holds(v, inside)), None)
            if held is not None:
                raise UserError(f"--grid {parent}: its value {held} has {inside} set by --grid {key} at every point "
                                "(that value would train nowhere); leave it out of one of them")


def _same_value(value: str, earlier: list[str]) -> bool:
    """Whether ``value`` reads as one of ``earlier`` (``0.1`` and ``1e-1``, ``256`` and
    ``256.0`` alike; ``true`` and ``1`` not, inside a list or mapping neither)."""
    return _read_value(value) in [_read_value(other) for other in earlier]


def _read_value(text: str) -> Any:  # noqa: ANN401 (what a grid value reads as)
    """A grid value as the recipe reads it (YAML, or the text itself where it is no YAML, as
    ``apply_override`` reads it), compared through ``_typed``."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    return _typed(value)


def _typed(value: Any) -> Any:  # noqa: ANN401 (a YAML value)
    """``value`` with each bool tagged (Python's ``True == 1``) and each number YAML leaves as
    text (``1e-1``) read as one, through its lists and mappings."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, list):
        return [_typed(item) for item in value]
    if isinstance(value, dict):
        return {key: _typed(item) for key, item in value.items()}
    return value


def _split_top_level(text: str) -> list[str]:
    """``text`` split at its commas outside brackets, braces and quotes (YAML's flow values
    and quoted strings keep theirs: ``"a,b",c`` is two values). A quote opens one only where
    YAML's would, where a value or an item begins (``it's,b`` is two values); inside one,
    YAML's escapes (``''`` in single quotes, a backslash in double) close none."""
    parts, depth, current, quote = [], 0, "", ""
    escaped = closed_single = False
    for char in text:
        reopens, closed_single = char == "'" and closed_single, False
        if quote:
            if escaped:
                escaped = False
            elif quote == '"' and char == "\\":
                escaped = True
            elif char == quote:
                quote, closed_single = "", char == "'"
        elif char in "'\"" and (reopens or current.rstrip()[-1:] in ("", "[", "{", ",", ":")):
            quote = char
        else:
            depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0 and not quote:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return parts + [current.strip()]


def holds(text: str, path: str) -> bool:
    """Whether a key set at the dotted ``path`` inside the value ``text`` (YAML) replaces part of
    it: a mapping holding ``path`` (``{name: sgd, lr: 0.5}`` holds ``lr``), or a null on the
    way (``null``: setting a key in it makes it a mapping, as ``apply_override`` does; an empty
    ``text`` is text there, no null)."""
    try:
        node = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return False
    for part in path.split("."):
        if node is None:
            return True
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
