"""``ctr bench compression``: embedding methods × memory budgets × seeds on one recipe.

Every cell (method, budget, seed) is one ``ctr train`` run in ``OUT/runs/<cell>``, in a
process of its own (its peak resident memory is the cell's; its log is
``OUT/logs/<cell>.log``); its figures become one row of ``OUT/results.csv`` (rewritten
atomically after each cell), so a rerun skips finished cells and resumes a cell whose run was
interrupted. Before training, the method is built on the prepared schema: a budget it cannot
reach is recorded as ``cannot reach (min x)`` and one past its compute limit as ``not run:
compute (estimate)``, and the grid goes on. After each cell it rewrites ``OUT/results.md``
(methods × budgets: test AUC mean ± std over seeds; then bytes, × full, train seconds, test
rows/s of the compressed model and peak resident memory (MiB, the largest of the seeds')
per method and budget; then each cell that failed, erred or went over its budget, with its
status) and ``OUT/auc_vs_memory.png``
(test AUC against bytes, log scale), so a grid of hours shows what it has so far. With
``drop_checkpoints`` (``--drop-checkpoints``) a finished cell's checkpoints are deleted once
its row is written (its recipe, log, metrics and stage outputs stay): a grid on 2 GB tables
would otherwise keep terabytes. A cell's run begun on rows its generated dataset's generator
now draws otherwise is moved into ``OUT/stale-runs`` (which may be deleted) and trained again.

Data, model, training and trainer settings come from the recipe, the same for every cell;
a method's own settings and the settings an out folder holds: ``ctr.bench.grid``. ``full``
ignores budgets and runs once per seed. A recipe whose embedding optimizer is fused into the lookup's backward
(``train.embedding_optimizer.fused``) keeps it for the methods that store a kernel table; the
others run the same optimizer unfused (the same update, applied after the backward).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

import yaml

from ctr.atomic import CsvRows, atomic_write
from ctr.bench.grid import (
    SETTINGS_FILE, UNBUDGETED, Cell, cell_recipe, cell_recipes, check_seeds, check_settings, embedding_keys,
    keep_settings, method_options, plan, prepare_once, say_base_keys_left_out,
)
from ctr.errors import UserError, sigterm_raises
from ctr.host import usable_cores
from ctr.metrics import mean_std
from ctr.recipe import Recipe, import_recipe_plugins, recipe_from_dict
from ctr.recipe.files import apply_override, read_yaml
from ctr.registry import EMBEDDINGS
from ctr.train.plots import save_png
from ctr.train.launch import STARTER
from ctr.train.refusal import MethodFailed, budget_refusal
from ctr.train.rundir import RunDir, refuse_writing_over_recipe

log = logging.getLogger("ctr.bench")

COLUMNS = [
    "method", "budget", "seed", "status", "test_auc", "test_logloss", "valid_auc", "embedding_bytes",
    "full_embedding_bytes", "memory_ratio", "train_seconds", "inference_seconds", "inference_rows_per_s",
    "peak_rss_mib", "run_dir",
]
RENAMED = {"peak_rss_mb": "peak_rss_mib"}  # an older ctr's name of a column (its values were MiB too)
NUMBERS = {  # what a non-empty value of these columns must parse as (the table and plot parse them)
    "seed": int, "embedding_bytes": int, "full_embedding_bytes": int,
    **{name: float for name in ("budget", "test_auc", "test_logloss", "valid_auc", "memory_ratio", "train_seconds",
                                "inference_seconds", "inference_rows_per_s", "peak_rss_mib")},
}
FINISHED = ("test_auc", "test_logloss", "embedding_bytes", "memory_ratio", "train_seconds")  # what an ok row holds
BENCH_FILE = "bench.json"  # what the benchmark measured of a cell beyond metrics.json
ATTEMPT = "--- ctr bench: "  # begins each attempt's lines in a cell's log
RESULTS_CSV, RESULTS_MD, PLOT = "results.csv", "results.md", "auc_vs_memory.png"  # written at OUT's top
WRITTEN = (SETTINGS_FILE, RESULTS_CSV, RESULTS_MD, PLOT)


class Results(CsvRows):
    """The results file: one row per cell. A cell whose training failed, or that its budget
    refused (its method's settings may have changed since), is tried again by the next run,
    its new row replacing the old one."""

    def __init__(self, path: Path):
        super().__init__(path, COLUMNS, NUMBERS, filled=_filled, renamed=RENAMED)

    def shown(self, seeds: int) -> list[dict[str, str]]:
        """The rows of the first ``seeds`` seeds (a rerun with fewer seeds reports those only)."""
        return [row for row in self.rows if int(row["seed"]) < seeds]

    def unfinished(self, cells: list[Cell]) -> list[str]:
        """The keys of ``cells`` whose row says their training failed or erred."""
        keys = {cell.key for cell in cells}
        return [Path(row["run_dir"]).name for row in self.rows if Path(row["run_dir"]).name in keys and _failed(row)]

    def holds_finished(self) -> bool:
        """Whether a row is of a cell that trained (one a rerun does not try again)."""
        return any(not _tried_again(row) for row in self.rows)

    def done(self, cell: Cell) -> bool:
        return any(Path(row["run_dir"]).name == cell.key and not _tried_again(row) for row in self.rows)

    def add(self, row: dict[str, object]) -> dict[str, str]:
        key = Path(str(row["run_dir"])).name
        self.rows = [r for r in self.rows if not (Path(r["run_dir"]).name == key and _tried_again(r))]
        return super().add(row)


def _filled(row: dict[str, str]) -> tuple[str, ...]:
    """The number columns that ``row`` holds values in: its seed, and what the table and plot
    read of a finished cell."""
    return ("seed",) + (FINISHED if row["status"] == "ok" else ())


def _failed(row: dict[str, str]) -> bool:
    return row["status"].startswith(("error", "failed"))


def _refused(row: dict[str, str]) -> bool:
    return row["status"].startswith(("cannot reach", "not run"))


def _tried_again(row: dict[str, str]) -> bool:
    """Whether a rerun tries the row's cell again: its training failed, or its budget was
    refused (``budget_refusal``: cheap to ask again, and a changed ``<method>.yaml`` has no
    run folder that ``check_settings`` could compare)."""
    return _failed(row) or _refused(row)


@dataclass(frozen=True)
class Grid:
    """A benchmark's settings, checked before anything is written (``check_grid``): its recipe
    file, where its results go, its base recipe (raw, its ``-o`` applied), its seeds and cells,
    each cell's raw recipe, by cell key the recipe of each cell not refused, and how many cells
    train at once."""

    recipe_path: Path
    out: Path
    base: dict[str, Any]
    seeds: int
    cells: list[Cell]
    raws: dict[str, dict[str, Any]]
    recipes: dict[str, Recipe]
    jobs: int


def check_grid(recipe_path: Path, methods: list[str], budgets: list[float], seeds: int, out: Path,
               overrides: list[str], jobs: int = 1) -> Grid:
    """Refuses bad flags (``--jobs``, ``--methods``, ``--budgets``, ``--seeds``), a bad recipe or
    ``-o`` (an error every cell shares with the base recipe) and an ``out`` that cannot hold the
    results or would write over the recipe, writing nothing: ``ctr bench compression`` checks
    before its lock beside ``out`` is made. Every cell's recipe is built."""
    RunDir(out).check_usable()  # a file, or a folder inside one
    base = read_yaml(recipe_path)
    overrides = embedding_keys(overrides)
    for item in overrides:
        apply_override(base, item)
    check_jobs(jobs, base)
    import_recipe_plugins(base)  # before --methods is checked: it may name a plugin's method
    check_seeds(base, seeds)
    cells = plan(methods, budgets, seeds)
    written = [out / name for name in WRITTEN] + [_cell_recipe_file(out, cell) for cell in cells]
    refuse_writing_over_recipe(recipe_path, out, written, "the benchmark")
    options = method_options(overrides)
    raws = {cell.key: cell_recipe(base, options, recipe_path, cell, out) for cell in cells}
    recipes = cell_recipes(raws, base, recipe_path)
    say_base_keys_left_out(recipe_path, cells, recipes)
    return Grid(recipe_path, out, base, seeds, cells, raws, recipes, jobs)


def run_compression(
    recipe_path: Path, methods: list[str], budgets: list[float], seeds: int, out: Path, overrides: list[str],
    jobs: int = 1, drop_checkpoints: bool = False,
) -> Results:
    """``run_grid`` of the grid ``check_grid`` makes of these settings: the library's one call
    (the CLI checks first, then takes its lock, then runs)."""
    return run_grid(check_grid(recipe_path, methods, budgets, seeds, out, overrides, jobs), drop_checkpoints)


def run_grid(grid: Grid, drop_checkpoints: bool = False) -> Results:
    """Runs every cell of ``grid`` (``check_grid``'s) not finished yet, its ``jobs`` cells at once
    (each trains in a process of its own); the table and the plot are rewritten after each
    cell (a long grid shows what it has so far) and once at the end. Before any cell, an
    ``out`` of other settings is refused (``check_settings``) and the data is prepared once."""
    out, cells = grid.out, grid.cells
    results = Results(out / RESULTS_CSV)
    check_settings(out, grid.base, grid.recipes, results.holds_finished())
    _drop_redrawn(results, cells, grid.recipes, out)
    todo = []
    for number, cell in enumerate(cells, 1):
        if results.done(cell):
            log.info("bench %d/%d %s: finished earlier, skipped", number, len(cells), cell.key)
        else:
            todo.append((f"{number}/{len(cells)}", cell))
    trainable = [grid.recipes[cell.key] for _, cell in todo if cell.key in grid.recipes]  # a refused recipe's: none
    if trainable:
        prepare_once(trainable[0], grid.recipe_path)
        keep_settings(out, grid.base)
    _run_cells(grid, todo, results, drop_checkpoints)
    _report(results, cells, out, grid.seeds)
    return results


def _run_cells(grid: Grid, todo: list[tuple[str, Cell]], results: Results, drop_checkpoints: bool) -> None:
    """Runs the cells ``todo`` (each with its number, as ``3/8``), ``grid.jobs`` at once, adding
    each one's row to ``results`` and rewriting the table and plot as it ends."""
    preparing = threading.Lock()  # cells of one seed share the prepared data: one prepares it
    pool, children = ThreadPoolExecutor(max_workers=grid.jobs), Children(grid.jobs)
    try:
        with sigterm_raises():
            running = [pool.submit(_run_cell, cell, grid.raws[cell.key], grid.out, number, preparing, children,
                                   drop_checkpoints) for number, cell in todo]
            for finished in as_completed(running):
                results.add(finished.result())
                _report(results, grid.cells, grid.out, grid.seeds)
    except BaseException:  # Ctrl-C, SIGTERM or a bug: no cell starts after it, the training ones stop
        pool.shutdown(wait=False, cancel_futures=True)
        children.stop()
        raise
    finally:
        pool.shutdown()


def check_jobs(jobs: int, base: dict[str, Any]) -> None:
    """Refuses ``jobs`` cells at once that would wait for each other (their train seconds and
    rows/s would time the wait): more jobs than the cores this process may run on, or jobs ×
    the base's explicit ``trainer.num_threads`` above them. With ``auto`` (the default) each
    cell's threads are its own cores' (``core_slices``)."""
    if jobs < 1:
        raise UserError(f"--jobs: must be >= 1, got {jobs}")
    cores, waiting = usable_cores(), "cells waiting for each other measure nothing: their train seconds and rows/s "
    if jobs > cores:
        raise UserError(f"--jobs: {jobs} is more than the {cores} cores this process may run on ({waiting}"
                        "would be the wait's)")
    trainer = base.get("trainer")
    threads = trainer.get("num_threads") if isinstance(trainer, dict) else None
    if isinstance(threads, int) and not isinstance(threads, bool) and jobs > 1 and jobs * threads > cores:
        raise UserError(f"--jobs: {jobs} cells of trainer.num_threads {threads} need {jobs * threads} cores, more than "
                        f"the {cores} this process may run on ({waiting}would be the wait's; leave num_threads auto)")


def core_slices(jobs: int) -> list[set[int]]:
    """The cores each of ``jobs`` cells at once trains on: disjoint, equal slices of those this
    process may run on (a cell's ``trainer.num_threads: auto`` is its slice's size); none for
    one job, or where the system has no CPU affinity."""
    affinity = getattr(os, "sched_getaffinity", None)
    if jobs == 1 or affinity is None:
        return []
    cores = sorted(affinity(0))
    size = len(cores) // jobs
    return [set(cores[i * size:(i + 1) * size]) for i in range(jobs)]


def _cell_recipe_file(out: Path, cell: Cell) -> Path:
    """Where ``cell``'s recipe is written under ``out``."""
    return out / "recipes" / f"{cell.key}.yaml"


def _drop_redrawn(results: Results, cells: list[Cell], recipes: dict[str, Recipe], out: Path) -> None:
    """Moves the runs of the cells begun on rows that their generated dataset's generator now
    draws otherwise (``RunDir.drawn_otherwise``) into ``OUT/stale-runs`` and drops their rows:
    they train again, as a resume of them is refused."""
    for cell in cells:
        run = RunDir(out / "runs" / cell.key)
        drawn = cell.key in recipes and run.holds_run and run.drawn_otherwise(recipes[cell.key].data)
        if drawn:
            results.drop(lambda row: Path(row["run_dir"]).name == cell.key)
            kept = run.set_aside(out / "stale-runs")
            log.warning("bench %s: %s: its run is moved to %s and trained again", cell.key, drawn, kept)


class Children:
    """The ``ctr train`` processes the cells run, ``jobs`` at once, each on a slice of the cores
    of its own (``core_slices``; Linux only): the thread that starts a child is pinned to its
    slice while it does, so the child inherits it from its first instruction, long before ctr
    reads its affinity or torch makes a thread. ``stop`` sends each SIGTERM (it keeps its last
    checkpoint: a rerun resumes it) and refuses new ones."""

    def __init__(self, jobs: int = 1) -> None:
        self._lock, self._running, self._stopping = threading.Lock(), {}, False
        self._free = core_slices(jobs)

    def start(self, command: list[str], stderr: IO[str]) -> subprocess.Popen | None:
        """The child running ``command``, or None once ``stop`` was called."""
        with self._lock:
            if self._stopping:
                return None
            env = {**os.environ, STARTER: str(os.getpid())}  # the child ends if this process is killed
            cores = self._free.pop() if self._free else None
            with _pinned(cores):
                try:
                    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
                except BaseException:
                    if cores:
                        self._free.append(cores)
                    raise
                self._running[child] = cores
            return child

    def ended(self, child: subprocess.Popen) -> None:
        with self._lock:
            cores = self._running.pop(child, None)
            if cores:
                self._free.append(cores)

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            for child in self._running:
                child.send_signal(signal.SIGTERM)


@contextlib.contextmanager
def _pinned(cores: set[int] | None) -> Iterator[None]:
    """Pins the calling thread to ``cores`` (none: leaves it) while the body runs, then gives
    it back its own: a child it starts meanwhile inherits them (``os.sched_setaffinity(0)``
    sets the calling thread's alone, on Linux). Cores it may not take are a warning: the child
    then runs on any core (its ``trainer.num_threads: auto`` every core)."""
    if not cores:
        yield
        return
    kept = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, cores)
    except OSError as err:
        log.warning("bench: cannot pin a cell's training to cores %s (%s): it runs on any core",
                    ",".join(map(str, sorted(cores))), err)
        kept = None  # the body runs outside this handler: its own errors chain to nothing of this
    try:
        yield
    finally:
        if kept is not None:
            with contextlib.suppress(OSError):  # the thread only waits for its child: any cores do
                os.sched_setaffinity(0, kept)


def _report(results: Results, cells: list[Cell], out: Path, seeds: int) -> None:
    """The table and the plot of the first ``seeds`` seeds' rows: the grid's in its order
    (whatever order they finished in), then those of cells run into ``out`` by other commands."""
    place = {cell.key: index for index, cell in enumerate(cells)}
    rows = sorted(results.shown(seeds), key=lambda row: place.get(Path(row["run_dir"]).name, len(place)))
    atomic_write(out / RESULTS_MD, markdown(rows))
    plot(rows, out / PLOT)


def _run_cell(
    cell: Cell, raw: dict[str, Any], out: Path, number: str, preparing: threading.Lock, children: Children,
    drop_checkpoints: bool,
) -> dict[str, Any]:
    run = RunDir(out / "runs" / cell.key)
    row: dict[str, Any] = {"method": cell.method, "budget": cell.budget, "seed": cell.seed, "run_dir": run.root}
    try:
        recipe = recipe_from_dict(raw)
        with preparing:
            refusal = None if run.metrics.exists() else budget_refusal(recipe)
    except UserError as err:
        log.warning("bench %s: %s", cell.key, err)
        return {**row, "status": f"error: {err}"}
    except MethodFailed as err:  # a method's bug at this budget: its cell fails, as its training in a child would
        return {**row, "status": _crashed(cell, err.__cause__, out)}
    if refusal is not None:
        log.info("bench %s: %s", cell.key, refusal)
        return {**row, "status": refusal}
    doing = ("reading its finished run" if run.metrics.exists() else
             "resuming its interrupted run" if run.started else "training")
    log.info("bench %s %s: %s", number, cell.key, doing)
    status = "ok" if run.metrics.exists() else _train_apart(cell, raw, run, out, children)
    if status != "ok":
        return {**row, "status": status}
    metrics = run.read_metrics()
    test_rows = json.loads((run.schema / "report.json").read_text())["splits"]["test"]["rows"]
    if drop_checkpoints:
        _drop_checkpoints(run)
    ratio = metrics["embedding_bytes"] / metrics["full_embedding_bytes"]
    return {
        **row,
        "status": _budget_status(cell, ratio),
        "test_auc": metrics["test"]["auc"],
        "test_logloss": metrics["test"]["logloss"],
        "valid_auc": metrics["valid"]["auc"],
        "embedding_bytes": metrics["embedding_bytes"],
        "full_embedding_bytes": metrics["full_embedding_bytes"],
        "memory_ratio": ratio,
        "train_seconds": metrics["train_seconds"],
        "inference_seconds": metrics["inference_seconds"],
        "inference_rows_per_s": test_rows / metrics["inference_seconds"],
        "peak_rss_mib": peak_mib(run.root),
    }


def _crashed(cell: Cell, err: Exception, out: Path) -> str:
    """The status of a cell whose method raised an unexpected error while its budget was asked
    (``budget_refusal`` builds the method in this process); its traceback goes to the cell's log."""
    log_file = out / "logs" / f"{cell.key}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a") as handle:  # a resumed cell's log keeps its earlier attempts
        handle.write(f"{ATTEMPT}its method built on the prepared data, to ask its budget\n")
        traceback.print_exception(err, file=handle)
    what = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no message'}"
    log.warning("bench %s: its method failed while its budget was asked: %s (see %s)", cell.key, what, log_file)
    return f"failed ({what}, see {log_file})"


def _budget_status(cell: Cell, ratio: float) -> str:
    """``ok``, or ``over budget (r × full)`` for a run whose deployed bytes exceed its budget
    (a plugin method that ignores its budget is not credited under it)."""
    if cell.budget is not None and ratio > cell.budget * (1 + 1e-9):
        return f"over budget ({ratio:.4f} × full)"
    return "ok"


def _drop_checkpoints(run: RunDir) -> None:
    """Deletes a finished run's checkpoint folders: the last stage's and every earlier stage's."""
    for folder in [run.checkpoints, *run.stages.glob("*/checkpoints")]:
        shutil.rmtree(folder, ignore_errors=True)


def _train_apart(cell: Cell, raw: dict[str, Any], run: RunDir, out: Path, children: Children) -> str:
    """Trains the cell with ``ctr train`` in a child process; "ok" or what went wrong. The
    child's peak resident memory goes to ``BENCH_FILE`` in its run directory."""
    recipe_file, log_file = _cell_recipe_file(out, cell), out / "logs" / f"{cell.key}.log"
    atomic_write(recipe_file, yaml.safe_dump(raw, sort_keys=False))
    log_file.parent.mkdir(parents=True, exist_ok=True)
    what = ["--resume", str(run.root)] if run.started else [str(recipe_file), "--out", str(run.root)]
    command = [sys.executable, "-m", "ctr.cli", "train", *what]
    with log_file.open("a") as stderr:  # a resumed cell's log keeps its earlier attempts
        stderr.write(f"{ATTEMPT}{' '.join(['ctr train', *what])}\n")
        stderr.flush()
        child = children.start(command, stderr)
        if child is None:
            return "failed (the benchmark was stopped)"
        try:
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            children.ended(child)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        lines = log_file.read_text(errors="replace").splitlines()
        begun = max((i for i, line in enumerate(lines) if line.startswith(ATTEMPT)), default=0)
        error = next((line for line in reversed(lines[begun:]) if line.startswith("ctr: error: ")), None)
        log.warning("bench %s: exit %d: %s", cell.key, code, error or f"see {log_file}")
        if code == 2 and error:
            return f"error: {error.removeprefix('ctr: error: ')}"
        return f"failed (exit {code}, see {log_file})"
    atomic_write(run.root / BENCH_FILE, json.dumps({"peak_rss_mib": usage.ru_maxrss / 1024}) + "\n")  # KiB on Linux
    return "ok"


def peak_mib(run_root: Path) -> float | None:
    """The peak resident memory in MiB (2**20 bytes) of the child that trained the run in
    ``run_root`` (``BENCH_FILE``; an older ctr's ``peak_rss_mb``, MiB too); None for a run
    finished by a child that outlived its benchmark (no peak memory on record)."""
    measured = run_root / BENCH_FILE
    if not measured.exists():
        return None
    bench = json.loads(measured.read_text())
    return bench.get("peak_rss_mib", bench.get("peak_rss_mb"))


def cell_groups(rows: list[dict[str, str]]) -> dict[tuple[str, str], list[dict[str, str]]]:
    """Rows by (method, budget), the budget ``full`` for the full table; first-seen order."""
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["budget"] or "full"), []).append(row)
    return groups


def markdown(rows: list[dict[str, str]]) -> str:
    """Methods × budgets table of test AUC, then one line per (method, budget) with details."""
    groups = cell_groups(rows)
    methods = list(dict.fromkeys(m for m, _ in groups))
    budgets = sorted({b for _, b in groups if b != "full"}, key=float, reverse=True)
    lines = ["| method | " + " | ".join(["full size"] + [f"budget {b}" for b in budgets]) + " |"]
    lines.append("|---" * (len(budgets) + 2) + "|")
    for method in methods:
        cells = [_auc_cell(groups.get((method, b), [])) for b in ["full"] + budgets]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| method | budget | embedding bytes | × full | test AUC | test logloss | train s | test rows/s "
        "| peak memory MiB | seeds |",
        "|---" * 10 + "|",
    ]
    for (method, budget), group in groups.items():
        ok = [r for r in group if r["status"] == "ok"]
        if not ok:
            lines.append(f"| {method} | {budget} | – | – | {group[0]['status']} | – | – | – | – | 0 |")
            continue
        auc, loss = _spread([r["test_auc"] for r in ok], ".4f"), _spread([r["test_logloss"] for r in ok], ".4f")
        times = [r["train_seconds"] for r in ok]
        seconds = _spread(times, ".0f" if min(map(float, times)) >= 10 else ".1f")  # short runs: tenths
        rate = _spread([r.get("inference_rows_per_s") or "nan" for r in ok], ",.0f")
        peaks = [float(r["peak_rss_mib"]) for r in ok if r.get("peak_rss_mib")]
        peak = f"{max(peaks):,.0f}" if peaks else "–"
        size = int(ok[0]["embedding_bytes"])
        ratio = float(ok[0]["memory_ratio"])
        lines.append(
            f"| {method} | {budget} | {size:,} | {ratio:.4f} | {auc} | {loss} | {seconds} | {rate} | {peak} "
            f"| {len(ok)} |"
        )
    return "\n".join(lines + _unfigured(rows)) + "\n"


def _unfigured(rows: list[dict[str, str]]) -> list[str]:
    """Lines naming each cell that failed, erred or went over its budget, with its status: the
    figures above leave it out, even where other seeds of its group finished (a refusal is its
    table entry)."""
    left = [row for row in rows if row["status"] != "ok" and not _refused(row)]
    if not left:
        return []
    return ["", "Not in the figures above:", ""] + [f"- `{Path(r['run_dir']).name}`: {r['status']}" for r in left]


def tally(rows: list[dict[str, str]]) -> str:
    """How many of ``rows``' cells finished, went over their budget, failed, or were refused
    by their method: ``6 cells (2 finished, 1 failed, 3 not run: refused by their method)``."""
    kinds = {
        "finished": sum(r["status"] == "ok" for r in rows),
        "over its budget": sum(r["status"].startswith("over budget") for r in rows),
        "failed": sum(_failed(r) for r in rows),
        "not run: refused by their method": sum(_refused(r) for r in rows),
    }
    counts = ", ".join(f"{count} {kind}" for kind, count in kinds.items() if count)
    return f"{len(rows)} cell{'s' if len(rows) != 1 else ''} ({counts})"


def _auc_cell(group: list[dict[str, str]]) -> str:
    ok = [r["test_auc"] for r in group if r["status"] == "ok"]
    if not group:
        return ""
    return _spread(ok, ".4f") if ok else group[0]["status"]


def _spread(values: list[str], spec: str) -> str:
    """Mean ± sample sd of ``values`` in format ``spec``; the value alone for one seed."""
    mean, std = mean_std([float(v) for v in values])
    return f"{mean:{spec}} ± {std:{spec}}" if len(values) > 1 else f"{mean:{spec}}"


STYLES = (("-", "o"), ("--", "s"), (":", "^"))  # line and marker of the 1st, 2nd, 3rd ten methods


def plot(rows: list[dict[str, str]], out: Path) -> None:
    """Test AUC (mean ± std over seeds) against embedding bytes of ``rows`` (``plot_points``)."""
    points: dict[str, list[tuple[float, float, float]]] = {}
    for (method, _), group in cell_groups(rows).items():
        ok = [r for r in group if r["status"] == "ok"]
        if ok:
            mean, std = mean_std([float(r["test_auc"]) for r in ok])
            points.setdefault(method, []).append((float(ok[0]["embedding_bytes"]), mean, std))
    plot_points(points, out)


def plot_points(points: dict[str, list[tuple[float, float, float]]], out: Path) -> None:
    """One line per method through its (embedding bytes, test AUC mean, std) points, log-scale
    bytes (10 colours × 3 line and marker styles tell the methods apart, each method's the
    same in every plot); ``full`` is a dashed line across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    colours = plt.get_cmap("tab10").colors
    names = EMBEDDINGS.names()  # a method keeps its colour and marker from one workload's plot to another's
    for method, unsorted in points.items():
        xs, ys, es = zip(*sorted(unsorted))
        if method in UNBUDGETED:
            ax.axhline(ys[0], color="black", linestyle="--", linewidth=1, label=f"{method} ({xs[0]:,.0f} bytes)")
            continue
        index = names.index(method) if method in names else len(names)
        line, marker = STYLES[index // len(colours) % len(STYLES)]
        ax.errorbar(xs, ys, yerr=es, marker=marker, linestyle=line, color=colours[index % len(colours)], capsize=3,
                    label=method)
    ax.set_xscale("log")
    ax.set_xlabel("embedding bytes")
    ax.set_ylabel("test AUC")
    ax.grid(alpha=0.3)
    if points:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", ncol=1 + len(points) // 12)
    save_png(fig, out)
