"""The settings tables of the user guide list the code's keys, and the defaults they write as
plain values (``16``, ``0.01``, ``true``, ``[400, 400]``, `` `relu` ``) are the code's: every
key of a registered model's or embedding method's config is in the table of its page
(``docs/models/<name>.md``, ``docs/embeddings/<name>.md``), every key a table lists is a key,
and so for the sections of the recipe reference (``docs/recipes.md``). Cells in words
(``required``, ``the variant's``, ``each `train.epochs` ``) are not compared."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import ctr.recipe as R
from ctr.registry import DATASETS, EMBEDDINGS, MODELS
from ctr.schema import FeatureSpec

DOCS = Path(__file__).resolve().parents[1] / "docs"
SAME_AS = {"int16": "int8", "autoint_plus": "autoint"}  # pages that say their settings are also another page's
_NO_VALUE = object()


def _defaults(cls: type) -> dict[str, Any]:
    """Key → default of config dataclass ``cls`` (``_NO_VALUE`` for a required key)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.init:
            factory = f.default_factory
            out[f.name] = f.default if f.default is not dataclasses.MISSING else (
                factory() if factory is not dataclasses.MISSING else _NO_VALUE)
    return out


def _split(cell: str) -> list[str]:
    """``a, [1, 2], c`` → ``[a, [1, 2], c]``: commas outside brackets."""
    parts, depth, current = [], 0, ""
    for char in cell:
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            parts, current = [*parts, current.strip()], ""
        else:
            current += char
    return [*parts, current.strip()]


def _table(text: str) -> dict[str, str]:
    """Key → default cell of the first ``| key | ... default ...`` table of ``text``; a row
    of n keys with n comma-separated defaults gives each its own; a row of ``a.b`` documents
    key ``a`` (the default of its part ``b`` is not ``a``'s)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"\| key \|.*\bdefault\b", line)), None)
    if start is None:
        return {}
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    column, out = header.index("default"), {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        keys = [k for k in re.findall(r"`([^`]+)`", cells[0]) if not k.startswith(".")]
        values = _split(cells[column]) if len(keys) > 1 else [cells[column]]
        values = values if len(values) == len(keys) else [""] * len(keys)
        out.update((k.split(".")[0], "" if "." in k else v) for k, v in zip(keys, values))  # a.b: a's subkey b
    return out


def _plain(cell: str) -> Any:
    """The value a cell writes plainly, or ``_NO_VALUE`` for words."""
    text = cell.replace("−", "-")
    bare = text.strip("`")
    if bare in ("true", "false"):
        return bare == "true"
    for kind in (int, float):
        try:
            return kind(bare)
        except ValueError:
            pass
    if bare[:1] in ("[", "{") and bare[-1:] in ("]", "}"):
        return yaml.safe_load(bare)
    if re.fullmatch(r"`[^`\s]+`", text):
        return bare
    return _NO_VALUE


def _mismatches(where: str, cls: type, documented: dict[str, str], common: set[str]) -> list[str]:
    """Keys of ``cls`` (less ``common``, documented elsewhere) missing from ``documented``,
    documented keys that are not keys of ``cls``, and plain defaults that differ."""
    code = _defaults(cls)
    found = [f"{where}: key {k!r} is not in the table" for k in code if k not in documented and k not in common]
    found += [f"{where}: {k!r} is no key of {cls.__name__}" for k in documented if k not in code]
    return found + _wrong_defaults(where, code, documented)


def _wrong_defaults(where: str, code: dict[str, Any], documented: dict[str, str]) -> list[str]:
    """The documented keys whose cell writes a plain value other than the code's default."""
    found = []
    for key, cell in documented.items():
        value, written = code.get(key, _NO_VALUE), _plain(cell)
        if value is _NO_VALUE or value is None or dataclasses.is_dataclass(value) or written is _NO_VALUE:
            continue
        if not _same(written, value):
            found.append(f"{where}: {key!r} is documented as {cell!r}, the code's default is {value!r}")
    return found


def _same(written: Any, value: Any) -> bool:
    """``64`` is the float 64.0 and ``1e-3`` is 0.001; otherwise equal values of one type."""
    if isinstance(value, float) and isinstance(written, (int, float)) and not isinstance(written, bool):
        return math.isclose(written, value)
    return type(written) is type(value) and written == value


def _builtin(registry: Any) -> list[Any]:
    """ctr's own entries of ``registry`` (another test in this process may have registered a
    plugin, which has no page)."""
    return [entry for entry in registry.entries() if entry.target.__module__.startswith("ctr.")]


@pytest.mark.parametrize("registry, folder, base", [(MODELS, "models", R.ModelConfig),
                                                    (EMBEDDINGS, "embeddings", R.EmbeddingConfig)])
def test_every_page_lists_its_settings_with_their_defaults(registry, folder, base):
    found = []
    for entry in _builtin(registry):
        documented = {}
        for name in (SAME_AS.get(entry.name), entry.name):
            if name:
                documented.update(_table((DOCS / folder / f"{name}.md").read_text()))
        found += _mismatches(f"docs/{folder}/{entry.name}.md", entry.config or base, documented, set(_defaults(base)))
    assert not found, "\n".join(found)


def _section(title: str, subsection: str = "") -> str:
    """The text of ``## title`` of the recipe reference, from ``### subsection`` when given."""
    text = (DOCS / "recipes.md").read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return text.split(f"\n### {subsection}\n", 1)[1] if subsection else text


@pytest.mark.parametrize("title, subsection, cls, nested", [
    ("Top level", "", R.Recipe, {"data", "model", "embedding", "train", "trainer", "distributed", "output"}),
    ("`data`", "", R.DataConfig, set()),
    ("`data`", "A feature spec", FeatureSpec, set()),
    ("`embedding`", "", R.EmbeddingConfig, set()),
    ("`train`", "", R.TrainConfig, set()),
    ("`trainer`", "", R.TrainerConfig, set()),
    ("`distributed`", "", R.DistributedConfig, set()),
])
def test_the_recipe_reference_lists_every_key_with_its_default(title, subsection, cls, nested):
    found = _mismatches(f"docs/recipes.md {title} {subsection}", cls, _table(_section(title, subsection)), nested)
    assert not found, "\n".join(found)


def test_the_recipe_reference_lists_every_dataset_key():
    """The table of each dataset's own keys (``| `name` | `key` (default), ... |``): every
    key of the dataset's config is in its row (``ipinyou``'s row reads "as `libsvm`")."""
    text = (DOCS / "recipes.md").read_text().split("Each dataset adds its own keys", 1)[1].split("\n\n", 2)[1]
    rows = dict(re.findall(r"^\| `(\w+)` \| (.*) \|$", text, re.MULTILINE))
    common, found = _defaults(R.DataConfig), []
    for entry in _builtin(DATASETS):
        row = rows.get(entry.name, "")
        row += rows["libsvm"] if "as `libsvm`" in row else ""
        documented = {k: v for k, v in re.findall(r"`(\w+)`(?: \(([^()]*)\))?", row)}
        own = {k: v for k, v in _defaults(entry.config or R.DataConfig).items() if k not in common}
        where = f"docs/recipes.md dataset {entry.name}"
        found += [f"{where}: key {k!r} is not in its row" for k in own if k not in documented]
        found += _wrong_defaults(where, own, documented)
    assert not found, "\n".join(found)
