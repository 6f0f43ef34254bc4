"""The compression benchmark's grid: its cells (method, budget, seed), each cell's recipe,
and the settings an out folder holds.

A cell's recipe is the base recipe (the recipe file with its ``-o``) with its embedding block
the method's: the ``embedding`` block of ``<method>.yaml`` beside the recipe when that file
exists, then ``-o embedding.<option>`` (an ``-o embedding={...}`` sets each key it names, as
one item per key would: ``embedding_keys``); ``dim`` and ``init_std`` are always the base's, as
is ``backend`` for a method that reads it (the others refuse it), and ``budget`` is the
cell's. An out folder holds the cells of one base recipe (``OUT/base.yaml``):
``check_settings`` refuses a rerun of other settings.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ctr.atomic import atomic_write
from ctr.datasets import prepare
from ctr.errors import UserError
from ctr.recipe import Recipe, recipe_from_dict
from ctr.recipe.checks import SEED_MAX, check_seeds_from, reads_backend
from ctr.recipe.files import apply_override, first_difference, read_yaml
from ctr.registry import EMBEDDINGS
from ctr.train.rundir import RunDir

log = logging.getLogger("ctr.bench")

UNBUDGETED = ("full",)


@dataclass(frozen=True)
class Cell:
    """One run of the benchmark: a method at a budget (None: the method has none) with a seed."""

    method: str
    budget: float | None
    seed: int

    @property
    def key(self) -> str:
        return f"{self.method}-{'full' if self.budget is None else _budget_text(self.budget)}-s{self.seed}"


def _budget_text(budget: float) -> str:
    """A budget as a cell's key shows it (budgets that show alike are one cell)."""
    return format(budget, "g")


def plan(methods: list[str], budgets: list[float], seeds: int) -> list[Cell]:
    """Every cell, method by method; ``full`` gets one cell per seed."""
    if not methods:
        raise UserError("--methods: give at least one embedding method, e.g. --methods full,hash")
    for name in methods:
        EMBEDDINGS.get(name, "--methods")
    for budget in budgets:
        if not 0 < budget <= 1:
            raise UserError(f"--budgets: {budget} is not in (0, 1]")
    for flag, values in (("--methods", methods), ("--budgets", [_budget_text(b) for b in budgets])):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise UserError(f"{flag}: {', '.join(repeated)} given twice (a cell would train twice into one run)")
    if not budgets and any(name not in UNBUDGETED for name in methods):
        raise UserError("--budgets: give at least one budget for the methods that take one, e.g. --budgets 0.5,0.1")
    if seeds < 1:
        raise UserError(f"--seeds: must be >= 1, got {seeds}")
    cells = []
    for name in methods:
        for budget in [None] if name in UNBUDGETED else budgets:
            cells += [Cell(name, budget, seed) for seed in range(seeds)]
    return cells


def check_seeds(base: dict[str, Any], seeds: int) -> None:
    """Refuses, before any cell is built, seeds ``seed + 1 ..`` past numpy's largest (a seed
    the base recipe refuses itself is left to its error)."""
    seed = base.get("seed", 42)
    if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= SEED_MAX:
        check_seeds_from(seed, seeds)


SETTINGS_FILE = "base.yaml"  # the recipe with its -o that every cell of an out folder is built from


def check_settings(out: Path, base: dict[str, Any], recipes: dict[str, Recipe], finished: bool) -> None:
    """Refuses an ``out`` whose cells were built from another recipe or -o (``base.yaml``), or
    whose run of a cell was begun with other settings (a method's ``<method>.yaml`` changed)
    or on input files changed since: their rows would share a table, and an interrupted run
    would resume with its old settings.
    An ``out`` none of whose runs began and whose results file holds no ``finished`` cell
    (every cell stopped before training, on what the data refuses: their rows are tried again)
    holds nothing of its settings to keep; a finished cell's row keeps them without its run folder."""
    runs = sorted((out / "runs").iterdir()) if (out / "runs").is_dir() else []
    begun = {path.name for path in runs if RunDir(path).holds_run}
    kept = out / SETTINGS_FILE
    changes = [_base_change(read_yaml(kept), base)] if kept.exists() and (begun or finished) else []
    for key, recipe in recipes.items():
        run_change = RunDir(out / "runs" / key).settings_change(recipe) if key in begun else None
        changes.append(run_change and f"{key}: {run_change}")
    change = next(filter(None, changes), None)
    if change:
        raise UserError(f"{out}: holds runs of other settings ({change}); choose another --out")
    for key in sorted(begun & recipes.keys()):
        RunDir(out / "runs" / key).check_compared_inputs(recipes[key].data, out)


def _base_change(kept: dict[str, Any], base: dict[str, Any]) -> str | None:
    """How ``base`` differs from the ``base.yaml`` an out folder keeps (``first_difference``)
    as the recipe reads both, as the cells' run folders are compared: a value spelt otherwise
    (``1e-2`` and ``0.01``) or a default written out is no difference, nor does it hide one
    after it. Compared as written where either is refused by the recipe."""
    read_kept, read_base = _read_recipe(kept), _read_recipe(base)
    if read_kept is None or read_base is None:
        return first_difference(kept, base)
    return first_difference(read_kept, read_base)


def _read_recipe(raw: dict[str, Any]) -> dict[str, Any] | None:
    """``raw`` as the recipe reads it (None where it refuses it: compared as written then)."""
    try:
        return recipe_from_dict(raw).to_dict()
    except UserError:
        return None


def keep_settings(out: Path, base: dict[str, Any]) -> None:
    """Writes ``base.yaml`` once a cell is about to train (a command that ended on an error
    before any cell leaves none: its rerun with the recipe fixed is not another setting's)."""
    atomic_write(out / SETTINGS_FILE, yaml.safe_dump(base, sort_keys=False))


def embedding_keys(overrides: list[str]) -> list[str]:
    """``overrides`` with each ``embedding={...}`` (a mapping) given as one
    ``embedding.<key>=<value>`` per key it names: a cell's embedding block is the method's,
    so a mapping of the whole section sets its keys there, as those items would (replacing
    the section dropped the method's options and the recipe's dim, init_std and backend)."""
    items = []
    for item in overrides:
        key, _, text = item.partition("=")
        value = _yaml_value(text) if key == "embedding" else None
        if isinstance(value, dict):
            items += [f"embedding.{name}={json.dumps(option)}" for name, option in value.items()]
        else:
            items.append(item)
    return items


def _yaml_value(text: str) -> Any:  # noqa: ANN401 (what a -o value parses as)
    """An -o value as ``apply_override`` reads it (None where it is no YAML)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def method_options(overrides: list[str]) -> list[str]:
    """The ``-o embedding.*`` items that set a method's own options: applied to every cell's
    method block (``dim``, ``init_std`` and ``backend`` come from the base: ``cell_recipe``;
    a cell's method and budget are its own)."""
    options = []
    for item in overrides:
        key = item.partition("=")[0]
        if key in ("embedding.method", "embedding.budget"):
            raise UserError(f"-o {key}: each cell's method and budget come from --methods and --budgets")
        if key.startswith("embedding.") and key.removeprefix("embedding.") not in BASE_EMBEDDING_KEYS:
            options.append(item)
    return options


BASE_EMBEDDING_KEYS = ("dim", "init_std", "backend")


def cell_recipes(raws: dict[str, dict[str, Any]], base: dict[str, Any], recipe_path: Path) -> dict[str, Recipe]:
    """Each cell's recipe (a cell whose recipe is refused is left out: its row records why);
    an error a cell shares with the base recipe (a key of the data, model or -o) is the
    command's, before any cell."""
    try:
        recipe_from_dict(base)
        shared = None
    except UserError as err:
        shared = str(err)
    recipes = {}
    for key, raw in raws.items():
        try:
            recipes[key] = recipe_from_dict(raw)
        except UserError as err:
            if str(err) == shared:
                raise UserError(f"{recipe_path} (with its -o): {err}") from None
    return recipes


def prepare_once(recipe: Recipe, recipe_path: Path) -> None:
    """Prepares the cells' data (shared by every cell) before any cell: a data error ends the
    command at once instead of failing each cell."""
    try:
        prepare(recipe.data, recipe.trainer.progress_bar)
    except UserError as err:
        raise UserError(f"{recipe_path} (with its -o): {err}") from None


def cell_recipe(base: dict[str, Any], options: list[str], recipe_path: Path, cell: Cell, out: Path) -> dict[str, Any]:
    """The cell's raw recipe: the base's, its embedding block the method's (``<method>.yaml``
    beside the recipe, then ``options``) with the base's dim, init_std and backend (this one
    for a method that reads it only; their defaults where the base leaves them out, the file's
    logged). A ``<method>.yaml`` naming another method is refused (its cells would train that
    one); one naming none (no key, or ``null``) gives the cell's."""
    raw = copy.deepcopy(base)
    embedding = _block(raw.get("embedding"), f"{recipe_path} (with its -o)")
    sibling = _method_file(recipe_path, cell.method)
    block = {"method": cell.method}
    if sibling is not None:
        given = _block(read_yaml(sibling).get("embedding"), str(sibling))
        if given.get("method") is None:  # ``method: null`` names none, as a file without the key
            given.pop("method", None)
        block = {**block, **given}
        if block["method"] != cell.method:
            raise UserError(f"{sibling}: embedding.method: {block['method']!r}, not {cell.method} (this file gives "
                            f"{cell.method}'s cells)")
    for key in BASE_EMBEDDING_KEYS:  # the recipe's, or their defaults where it leaves them out: never the file's
        block.pop(key, None)
        if key in embedding:
            block[key] = embedding[key]
    _drop_unread_backend(embedding, block, cell)
    holder = {"embedding": block}
    for item in options:
        apply_override(holder, item)
    block["budget"] = cell.budget
    raw["embedding"] = block
    _unfuse_unless_fusable(raw, cell)
    seed = raw.get("seed", 42)
    if isinstance(seed, int) and not isinstance(seed, bool):  # else the recipe's own error, before any cell
        raw["seed"] = seed + cell.seed
    raw["name"] = f"{raw.get('name', 'bench')}-{cell.key}"
    raw["output"] = {"dir": str(out / "runs" / cell.key)}
    return raw


def _block(value: Any, source: str) -> dict[str, Any]:  # noqa: ANN401 (a raw recipe's value)
    """A raw recipe's ``embedding`` block read from ``source`` (None: an empty one); a
    UserError, as the recipe gives, when it is not a mapping."""
    if value is not None and not isinstance(value, dict):
        raise UserError(f"{source}: embedding: expected a mapping, got {value!r}")
    return value or {}


def _method_file(recipe_path: Path, method: str) -> Path | None:
    """The ``<method>.yaml`` beside the recipe that gives ``method``'s cells their settings
    (None without one, or where it is the recipe itself)."""
    sibling = recipe_path.parent / f"{method}.yaml"
    return sibling if sibling.exists() and sibling.resolve() != recipe_path.resolve() else None


def say_base_keys_left_out(recipe_path: Path, cells: list[Cell], recipes: dict[str, Recipe]) -> None:
    """Logs once per ``<method>.yaml`` the ``dim``, ``init_std`` and ``backend`` it gives that
    its cells, checked in ``recipes`` by cell key, train otherwise (the recipe's, or their
    defaults, are every cell's: any cell of a method shows them); values are compared as the
    recipe reads them (``1e-2`` is 0.01)."""
    for method, cell in {cell.method: cell for cell in cells if cell.key in recipes}.items():
        sibling = _method_file(recipe_path, method)
        if sibling is None:
            continue
        given, trained = read_yaml(sibling).get("embedding") or {}, recipes[cell.key].embedding
        differ = {key: getattr(trained, key) for key in BASE_EMBEDDING_KEYS
                  if key in given and not _same_value(given[key], getattr(trained, key))}
        if differ:
            log.info("bench: %s: %s %s left out (every cell's is the recipe's, or its default: %s)", sibling,
                     " and ".join(f"embedding.{key} {json.dumps(given[key], default=str)}" for key in differ),
                     "is" if len(differ) == 1 else "are", " and ".join(json.dumps(v) for v in differ.values()))


def _same_value(given: Any, trained: Any) -> bool:
    """Whether a ``<method>.yaml``'s raw value ``given`` reads as the cells' checked ``trained``
    (a number YAML left as text, ``1e-2``, as the recipe takes it)."""
    if isinstance(trained, (int, float)) and not isinstance(trained, bool) and isinstance(given, str):
        try:
            return float(given) == trained
        except ValueError:
            return False
    return given == trained


def _drop_unread_backend(base: dict[str, Any], block: dict[str, Any], cell: Cell) -> None:
    """Leaves the base's ``embedding.backend`` out of the cell's ``block`` when the cell's
    method does its own lookups (the recipe refuses the key there)."""
    if base.get("backend") is not None and not reads_backend(cell.method):
        log.info("bench %s: %s does its own lookups: the recipe's embedding.backend is left out", cell.key, cell.method)
        del block["backend"]


def _unfuse_unless_fusable(raw: dict[str, Any], cell: Cell) -> None:
    """Turns off ``train.embedding_optimizer.fused`` in ``raw`` when the cell's method has no
    kernel table to update fused (a block that is not a mapping is left to the recipe's error)."""
    train = raw.get("train")
    optimizer = train.get("embedding_optimizer") if isinstance(train, dict) else None
    if isinstance(optimizer, dict) and optimizer.get("fused") and not EMBEDDINGS.get(cell.method).target.fusable:
        log.info("bench %s: %s has no kernel table: its embedding optimizer runs unfused", cell.key, cell.method)
        raw["train"] = {**raw["train"], "embedding_optimizer": {**optimizer, "fused": False}}


