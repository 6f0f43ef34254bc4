"""``ctr tune``: a grid of recipe settings chosen on validation, then the choice over seeds.

Stage 1 trains every point of the grid once, with the recipe's seed, and ranks the points by
the recipe's early-stopping monitor (``train.early_stop.monitor``, e.g. ``valid/auc``) as
metrics.json reports it for the run's best checkpoint. Test metrics are recorded, never used
to choose. Every point is validated on the same rows: an axis of a data key that changes them
(``data.split``, ``data.path``, ...) is refused, one of how rows are encoded or fed
(``DataConfig.tunable_keys()``) is not. Stage 2 trains the chosen point with seeds
``seed + 1 .. seed + n - 1`` (its stage-1 run is seed ``seed``) and reports each test metric
as mean ± sample sd.

    ctr tune recipes/amazon_beauty/deepfm.yaml --grid train.embedding_optimizer.lr=0.01,0.05 \\
        --grid model.dropout=0,0.2 --seeds 3 --out runs/tune-deepfm

Writes ``OUT/results.csv`` (one row per run, rewritten atomically after each run, so a rerun
skips finished runs and resumes an interrupted one), ``OUT/results.md`` (the ranking and the
chosen point's seeds) and ``OUT/best.yaml`` (the recipe with the chosen settings applied).
A run begun on rows its generated dataset's generator now draws otherwise is moved into
``OUT/stale-runs`` (which may be deleted) and trained again. The grid's axes and points:
``ctr.train.grid``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import yaml

from ctr.atomic import CsvRows, atomic_write
from ctr.errors import TrainingDiverged, UserError
from ctr.metrics import mean_std
from ctr.recipe import OutputConfig, Recipe, recipe_from_dict
from ctr.recipe.checks import check_seeds_from, reads_backend
from ctr.recipe.files import apply_override, read_yaml
from ctr.registry import EMBEDDINGS
from ctr.train.grid import Point, holds
from ctr.train.launch import require_one_process
from ctr.train.optim import require_fused_form
from ctr.train.refusal import MethodFailed, budget_refusal
from ctr.train.rundir import RunDir, refuse_writing_over_recipe

log = logging.getLogger("ctr.tune")

COLUMNS = ["point", "settings", "seed", "offset", "recipe", "monitor", "valid", "failed", "test_auc", "test_gauc",
           "test_logloss", "run_dir"]
TEST_KEYS = ("auc", "gauc", "logloss")
NUMBERS = {"seed": int, "offset": int, "valid": float, **{f"test_{key}": float for key in TEST_KEYS}}
Trainer = Callable[[Recipe, Path, bool], dict[str, Any]]
RESULTS_CSV, RESULTS_MD, BEST = "results.csv", "results.md", "best.yaml"  # written at OUT's top
WRITTEN = (RESULTS_CSV, RESULTS_MD, BEST)


def fingerprint(recipe: Recipe) -> str:
    """A short hash of the whole resolved recipe (its seed included): which run a row is of."""
    return hashlib.sha256(json.dumps(recipe.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _filled(row: dict[str, str]) -> tuple[str, ...]:
    """The number columns that ``row`` holds values in: its seed and offset, and its
    validation value unless its training failed."""
    return ("seed", "offset") + (() if row["failed"] else ("valid",))


class Results(CsvRows):
    """The results file: one row per finished (or diverged) run, with the fingerprint of the
    recipe it trained."""

    def __init__(self, path: Path):
        super().__init__(path, COLUMNS, NUMBERS, filled=_filled)

    def find(self, point: Point, offset: int) -> dict[str, str] | None:
        return next((r for r in self.rows if r["point"] == point.key and int(r["offset"]) == offset), None)

    def check_same_grid(self, recipes: dict[str, Recipe],
                        same_in_run_folder: Callable[[dict[str, str], Recipe], bool]) -> None:
        """Refuses rows of another grid, base recipe or seed (a rerun with other settings
        into the same --out would take their results for its own points). A row whose
        fingerprint differs is kept when its run folder holds a run begun with the same
        settings (``same_in_run_folder``: its recipe.yaml compared key by key): a run of an
        earlier ctr, whose recipe lacked a key added since, hashes otherwise."""
        for row in self.rows:
            recipe = recipes.get(row["point"])
            if recipe is not None:
                recipe = replace(recipe, seed=recipe.seed + int(row["offset"]))
            if recipe is None or (row["recipe"] != fingerprint(recipe) and not same_in_run_folder(row, recipe)):
                raise UserError(f"{self.path}: holds runs of other settings ({row['point']} seed {row['seed']}: "
                                f"{row['settings']}); choose another --out")


@dataclass(frozen=True)
class Checked:
    """A tuning's settings, checked before anything is written: its base recipe (raw, its
    ``-o`` applied), each point's recipe by key, and the validation metric and mode ranking them."""

    base: dict[str, Any]
    recipes: dict[str, Recipe]
    monitor: str
    mode: str


@dataclass
class Tuning:
    """A grid search over one recipe file; ``train`` is ``ctr.train.runner.train``'s signature."""

    recipe_path: Path
    points: list[Point]
    seeds: int
    out: Path
    overrides: list[str]
    train: Trainer
    _checked: Checked | None = field(default=None, init=False, repr=False)

    def check(self) -> Checked:
        """Refuses bad flags, a bad recipe or point, and an ``out`` that cannot hold the results,
        writing nothing (``ctr tune`` checks before its lock beside ``out`` is made); once."""
        if self._checked is not None:
            return self._checked
        if self.seeds < 1:
            raise UserError(f"--seeds: must be >= 1, got {self.seeds}")
        RunDir(self.out).check_usable()  # a file, or a folder inside one
        refuse_writing_over_recipe(self.recipe_path, self.out, [self.out / name for name in WRITTEN], "the tuning")
        _check_overrides(self.points, self.overrides)
        base = read_yaml(self.recipe_path)
        for item in self.overrides:
            apply_override(base, item)
        recipes = {p.key: self._recipe(base, p) for p in self.points}  # every point validated before any training
        _check_data_axes(self.points, recipes[self.points[0].key])
        _check_distinct(self.points, recipes)
        self._check_seeds(recipes)
        self._checked = Checked(base, recipes, *criterion(list(recipes.values())))
        return self._checked

    def run(self) -> Point:
        """Stage 1, the choice, stage 2 (after ``check``); writes the tables; returns the chosen point."""
        checked = self.check()
        base, recipes, monitor, mode = checked.base, checked.recipes, checked.monitor, checked.mode
        results = Results(self.out / RESULTS_CSV)
        results.check_same_grid(recipes, self._same_in_run_folder)
        self._check_started_runs(recipes)
        self._drop_redrawn(recipes, results)
        refused = self._refused(recipes, results)
        runnable = [p for p in self.points if p.key not in refused]
        first = [self._run(results, p, recipes[p.key], 0, monitor) for p in runnable]
        best = runnable[choose(first, monitor, mode)]
        for offset in range(1, self.seeds):
            self._run(results, best, recipes[best.key], offset, monitor)
        atomic_write(self.out / BEST, yaml.safe_dump(self._raw(base, best), sort_keys=False))
        not_run = {p.label: refused[p.key] for p in self.points if p.key in refused}
        asked = [r for r in results.rows if int(r["offset"]) < self.seeds]  # a rerun with fewer seeds: not the rest
        atomic_write(self.out / RESULTS_MD, markdown(asked, best, monitor, mode, not_run))
        return best

    def _check_seeds(self, recipes: dict[str, Recipe]) -> None:
        """Refuses, before any point trains, seeds ``seed + 1 ..`` of stage 2 past numpy's
        largest (Lightning's ``seed_everything`` raises on them)."""
        check_seeds_from(max(recipe.seed for recipe in recipes.values()), self.seeds)

    def _check_started_runs(self, recipes: dict[str, Recipe]) -> None:
        """Refuses run folders of other settings (a run interrupted before its row was written:
        resuming it, or reading its metrics, would record the old settings' result as the new's),
        and runs begun on input files changed since. A folder with nothing to resume or read (a
        point an earlier ctr's run refused before training: its recipe and schema only) is trained afresh, as
        ``ctr train`` does."""
        for point in self.points:
            recipe = recipes[point.key]
            for offset in range(self.seeds):
                run = self._run_dir(point.key, offset)
                if not run.holds_run:
                    continue
                change = run.settings_change(replace(recipe, seed=recipe.seed + offset))
                if change:
                    raise UserError(f"{self.out}: holds runs of other settings ({run.root.name}: {change}); "
                                    "choose another --out")
                run.check_compared_inputs(recipe.data, self.out)

    def _drop_redrawn(self, recipes: dict[str, Recipe], results: Results) -> None:
        """Moves the runs begun on rows that their generated dataset's generator now draws
        otherwise (``RunDir.drawn_otherwise``) into ``OUT/stale-runs`` and drops their rows:
        they train again, as a resume of them is refused."""
        for point in self.points:
            for offset in range(self.seeds):
                run = self._run_dir(point.key, offset)
                drawn = run.holds_run and run.drawn_otherwise(recipes[point.key].data)
                if drawn:
                    results.drop(lambda row: row["point"] == point.key and int(row["offset"]) == offset)
                    kept = run.set_aside(self.out / "stale-runs")
                    log.warning("tune %s seed %d (%s): %s: its run is moved to %s and trained again", point.key,
                                recipes[point.key].seed + offset, point.label, drawn, kept)

    def _same_in_run_folder(self, row: dict[str, str], recipe: Recipe) -> bool:
        """Whether ``row``'s run folder holds a run begun with ``recipe`` (its recipe.yaml
        compared key by key), whatever ``--seeds`` asks now: a row past them is kept too."""
        run = self._run_dir(row["point"], int(row["offset"]))
        return run.holds_run and run.recipe.exists() and run.settings_change(recipe) is None

    def _run_dir(self, point_key: str, offset: int) -> RunDir:
        return RunDir(self.out / "runs" / f"{point_key}-s{offset}")

    def _refused(self, recipes: dict[str, Recipe], results: Results) -> dict[str, str]:
        """Point key → why its embedding method refuses its budget (a method × budget grid
        may pair a method with a budget it cannot reach): those points are not trained.
        A point finished earlier is not asked again. A method's own error while it is asked
        is raised as itself (``ctr``'s one line for an OSError, a traceback for a bug), as
        when the point trains: a tune has no cell for it to fail."""
        refused = {}
        for point in self.points:
            recipe = recipes[point.key]
            try:
                why = None if results.find(point, 0) else budget_refusal(recipe)
            except MethodFailed as err:
                raise (err.__cause__ or err) from None
            if why is not None:
                log.warning("tune %s (%s): not trained: %s", point.key, point.label, why)
                refused[point.key] = why
        if len(refused) == len(self.points):
            raise UserError("--grid: no point can be trained (every method refuses its budget: "
                            + "; ".join(f"{p.label}: {refused[p.key]}" for p in self.points) + ")")
        return refused

    def _raw(self, base: dict[str, Any], point: Point) -> dict[str, Any]:
        raw = copy.deepcopy(base)
        for item in point.overrides:
            apply_override(raw, item)
        _drop_unread_backend(raw, point)
        _drop_unread_decay(raw, point)
        return raw

    def _recipe(self, base: dict[str, Any], point: Point) -> Recipe:
        """The point's recipe; an error names the point, or the recipe and its -o when the
        point's settings are not what is wrong (the same error without them)."""
        try:
            raw = self._raw(base, point)
            recipe = _trainable_here(recipe_from_dict(raw))
        except UserError as err:
            try:
                _trainable_here(recipe_from_dict(base))
            except UserError as without:
                if str(without) == str(err):
                    raise UserError(f"{self.recipe_path} (with its -o): {err}") from None
            raise UserError(f"--grid {point.label}: {err}") from None
        if _base_backend(base) is not None and "backend" not in raw["embedding"]:
            log.info("tune %s (%s): %s does its own lookups: the recipe's embedding.backend is left out",
                     point.key, point.label, recipe.embedding.method)
        return recipe

    def _run(self, results: Results, point: Point, recipe: Recipe, offset: int, monitor: str) -> dict[str, str]:
        """Trains ``point`` with seed ``recipe.seed + offset`` (or finds it done); its row. A
        run whose loss diverges is a row marked failed: the grid goes on without it."""
        recipe = replace(recipe, seed=recipe.seed + offset)
        done = results.find(point, offset)
        if done is not None:
            log.info("tune %s seed %d (%s): finished earlier, skipped", point.key, recipe.seed, point.label)
            return done
        log.info("tune %s seed %d (%s): training", point.key, recipe.seed, point.label)
        run = self._run_dir(point.key, offset)
        row = {"point": point.key, "settings": point.label, "seed": recipe.seed, "offset": offset,
               "recipe": fingerprint(recipe), "monitor": monitor, "run_dir": run.root}
        try:
            metrics = run.read_metrics() if run.metrics.exists() else self.train(recipe, run.root, run.started)
        except TrainingDiverged as err:
            log.warning("tune %s seed %d (%s): failed: %s", point.key, recipe.seed, point.label, err)
            return results.add({**row, "failed": str(err)})
        except UserError as err:  # found once the data is prepared (eval_every_n_steps against an epoch, ...)
            raise UserError(f"tune {point.key} ({point.label}) seed {recipe.seed}: {err}") from None
        name = monitor.removeprefix("valid/")  # a metric every run logs: checked before training
        test = metrics["test"]
        return results.add({**row, "valid": metrics["valid"][name], **{f"test_{k}": test.get(k) for k in TEST_KEYS}})


def _check_overrides(points: list[Point], overrides: list[str]) -> None:
    """Refuses an ``-o`` of a key a ``--grid`` axis sets, or of a key below one, or of a
    mapping holding one (``-o train.optimizer={name: sgd, lr: 0.5}`` with ``--grid
    train.optimizer.lr=...``): every point replaces its value, so it would train nowhere."""
    axes = {item.partition("=")[0] for point in points for item in point.overrides}
    for item in overrides:
        key, _, text = item.partition("=")
        axis = next((axis for axis in sorted(axes) if key == axis or key.startswith(f"{axis}.")), None)
        if axis is not None:
            raise UserError(f"-o {key}: --grid {axis} sets it at every point (the -o value would be ignored); "
                            "give it in one of them")
        inside = next((axis for axis in sorted(axes)
                       if axis.startswith(f"{key}.") and holds(text, axis.removeprefix(f"{key}."))), None)
        if inside is not None:
            raise UserError(f"-o {key}: its {inside.removeprefix(key + '.')} is set by --grid {inside} at every "
                            "point (the -o value would be ignored); give it in one of them")


def _check_data_axes(points: list[Point], first: Recipe) -> None:
    """Refuses a ``--grid`` axis of a data key that changes which rows (or labels) a point is
    validated on (``data.split``, ``data.path``, ``data.rows``, ...): a ranking compares
    points on one validation set, as an Optuna or Ray Tune objective does. The data keys
    that change only how rows are encoded or fed (``DataConfig.tunable_keys`` of the first
    point's recipe ``first``: ``features``, ``min_count``, ...) may vary."""
    allowed = first.data.tunable_keys()  # every point's dataset is the first's (data.dataset is refused)
    skipped = "; with data.on_bad_rows: skip, the keys that decide which rows are bad are not" \
        if first.data.on_bad_rows == "skip" else ""
    for key in (item.partition("=")[0] for item in points[0].overrides):
        path = key.split(".")
        if path[0] == "data" and (len(path) == 1 or path[1] not in allowed):
            raise UserError(f"--grid {key}: changes the validation data (its points would be ranked on different "
                            f"validation rows or labels); a grid's data keys are {', '.join(allowed)} here (run "
                            "ctr tune once per setting of the others" + skipped + ")")


def _check_distinct(points: list[Point], recipes: dict[str, Recipe]) -> None:
    """Refuses two points of one recipe (a default spelt out: ``model=null,{name: dlrm}``), its
    ``name`` and ``output`` aside (every run goes to ``OUT/runs``): it would train twice,
    ranked as two settings."""
    first: dict[str, Point] = {}
    for point in points:
        trained = replace(recipes[point.key], name="", output=OutputConfig())
        earlier = first.setdefault(fingerprint(trained), point)
        if earlier is not point:
            raise UserError(f"--grid: {point.key} ({point.label}) trains the recipe of {earlier.key} ({earlier.label}) "
                            "(a point would train twice)")


def _base_backend(raw: dict[str, Any]) -> Any:
    """The ``embedding.backend`` of a raw recipe (None where it has none)."""
    embedding = raw.get("embedding")
    return embedding.get("backend") if isinstance(embedding, dict) else None


def _drop_unread_backend(raw: dict[str, Any], point: Point) -> None:
    """Leaves the base recipe's ``embedding.backend`` out of ``raw``, the recipe of ``point``,
    when the method the point gives does its own lookups: the recipe refuses the key there, and a
    kernel backend changes no result (``ctr bench compression`` leaves it out of such cells
    too). A backend the point itself gives, or a base recipe's own method that refuses its
    backend, stays for the recipe to refuse."""
    keys = {item.partition("=")[0] for item in point.overrides}
    if _base_backend(raw) is None or "embedding.method" not in keys or "embedding.backend" in keys:
        return
    method = raw["embedding"].get("method", "full")
    if isinstance(method, str) and method in EMBEDDINGS and not reads_backend(method):
        del raw["embedding"]["backend"]


def _drop_unread_decay(raw: dict[str, Any], point: Point) -> None:
    """Leaves the base recipe's ``decay_steps`` and ``min_lr`` out of a schedule that ``point``
    makes ``decay: none`` (read by a decay only, the recipe refuses them there: a grid of
    ``train.scheduler.decay=none,linear`` needs them for its other points). Those the point
    itself gives stay for the recipe to refuse."""
    keys = {item.partition("=")[0] for item in point.overrides}
    train = raw.get("train")
    for section in ("scheduler", "embedding_scheduler"):
        block = train.get(section) if isinstance(train, dict) else None
        if f"train.{section}.decay" not in keys or not isinstance(block, dict) or block.get("decay") != "none":
            continue
        for key in ("decay_steps", "min_lr"):
            if f"train.{section}.{key}" not in keys:
                block.pop(key, None)


def _trainable_here(recipe: Recipe) -> Recipe:
    """``recipe``, refused if it asks for several processes (every run trains in this one), or a
    fused table update its embedding optimizer has no fused form of (``ctr train`` refuses it
    before any work)."""
    require_one_process(recipe)
    require_fused_form(recipe.train.embedding_optimizer)
    return recipe


def criterion(recipes: list[Recipe]) -> tuple[str, str]:
    """The validation metric and its direction every point is ranked by: the recipes' early
    stopping monitor (``valid/auc``, max, without one); the same for every point."""
    found = {r.train.best_by[0] for r in recipes}
    modes = {r.train.best_by[1] for r in recipes}
    if len(found) > 1 or len(modes) > 1:
        raise UserError(f"--grid: every point must rank by one train.early_stop monitor and mode, got {found} {modes}")
    monitor = found.pop()
    if not monitor.startswith("valid/"):
        raise UserError(f"train.early_stop.monitor: {monitor!r}: tuning ranks by a validation metric (valid/...)")
    return monitor, modes.pop()


def choose(rows: list[dict[str, str]], monitor: str, mode: str) -> int:
    """Index of the row with the best validation value (first on ties; failed rows never, nor
    rows whose value is nan: ``monitor`` undefined on the validation split); test values unused."""
    trained = [(float(r["valid"]), i) for i, r in enumerate(rows) if not r["failed"]]
    if not trained:
        raise UserError("--grid: every point failed (" + "; ".join(f"{r['settings']}: {r['failed']}" for r in rows) + ")")
    defined = [(v, i) for v, i in trained if not math.isnan(v)]
    if not defined:
        raise UserError(f"--grid: {monitor} is nan on every point (undefined on the validation split, e.g. a gauc "
                        "when no validation group holds both labels); rank by another train.early_stop.monitor")
    best = max(v for v, _ in defined) if mode == "max" else min(v for v, _ in defined)
    return next(i for v, i in defined if v == best)


def _ranked_value(row: dict[str, str], worst: float) -> float:
    """A row's validation value for the ranking: ``worst`` for a failed row or a nan value."""
    value = worst if row["failed"] else float(row["valid"])
    return worst if math.isnan(value) else value


def markdown(rows: list[dict[str, str]], best: Point, monitor: str, mode: str,
             not_run: dict[str, str] | None = None) -> str:
    """Stage 1's points ranked by the monitor, the points ``not_run`` (settings → why), then
    the chosen point's test metrics over the seeds that trained (a diverged one named)."""
    first = [r for r in rows if r["offset"] == "0"]  # stage 1: each point with the recipe's seed
    worst = float("-inf") if mode == "max" else float("inf")
    first.sort(key=lambda r: _ranked_value(r, worst), reverse=mode == "max")
    lines = [f"| point | settings | {monitor} | test AUC | test group AUC | test logloss |", "|---" * 6 + "|"]
    for row in first:
        mark = " (chosen)" if row["point"] == best.key else ""
        scores = f"failed: {row['failed']} | – | – | –" if row["failed"] else (
            f"{float(row['valid']):.4f} | " + " | ".join(_number(row[f"test_{k}"]) for k in TEST_KEYS))
        lines.append(f"| {row['point']}{mark} | {row['settings']} | {scores} |")
    if not_run:
        lines += ["", "Not trained (refused before training):", ""]
        lines += [f"- `{label}`: {why}" for label, why in not_run.items()]
    runs = [r for r in rows if r["point"] == best.key]
    chosen = [r for r in runs if not r["failed"]]
    count = f"{len(chosen)} of {len(runs)}" if len(chosen) < len(runs) else f"{len(chosen)}"
    notes = (["mean ± sample sd"] if len(chosen) > 1 else []) + [
        f"seed {r['seed']} failed: {r['failed']}" for r in runs if r["failed"]]
    seeds = f"{count} seed" + ("s" if len(runs) > 1 else "") + (f" ({'; '.join(notes)})" if notes else "")
    lines += ["", f"Chosen: `{best.label}`, {seeds}:", "",
              f"| {monitor} | test AUC | test group AUC | test logloss |", "|---" * 4 + "|"]
    cells = [_spread([r["valid"] for r in chosen])] + [_spread([r[f"test_{k}"] for r in chosen]) for k in TEST_KEYS]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _number(text: str) -> str:
    return f"{float(text):.4f}" if text else "–"


def _spread(values: list[str]) -> str:
    if not values or not all(values):
        return "–"
    mean, std = mean_std([float(v) for v in values])
    return f"{mean:.4f} ± {std:.4f}" if len(values) > 1 else f"{mean:.4f}"
