"""``ctr train`` and ``ctr eval``: data → loaders → the training loop → run directory."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L

from ctr.datasets import prepare
from ctr.datasets.progress import shows_bars
from ctr.datasets.source import SPLITS, resolve_features
from ctr.errors import UserError, sigterm_raises
from ctr.recipe import Recipe
from ctr.train import distributed
from ctr.train.checkpoints import check_resumable, holds_distributed_checkpoints, resumed_trainings
from ctr.train.launch import group_holds, launched, process_group, require_one_process, shared_path
from ctr.train.checks import check_before_fit, check_schedule_floors, require_rows
from ctr.train.loop import (
    Session, check_best_kept, evaluate_checkpoint, fit, quiet_lightning, trainer_for, use_threads,
)
from ctr.train.optim import fused_optimizer
from ctr.train.placement import Placement, placement
from ctr.train.plots import plot_curves
from ctr.train.rundir import RESUME_OVERRIDES, RunDir, default_run_dir
from ctr.train.saved import encode_rows, finished_run, oov_counts, restored_task
from ctr.train.stages import train_stages
from ctr.train.task import CTRTask, summary

log = logging.getLogger("ctr.train")


def train(recipe: Recipe, out: Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Trains ``recipe`` into run directory ``out``; returns (and writes) metrics.json."""
    require_one_process(recipe)
    quiet_lightning()
    root = out or default_run_dir(recipe)
    if resume:
        RunDir(root).check_resumed_world(recipe.trainer.world_size)
    if launched() or (resume and holds_distributed_checkpoints(root)):
        with process_group(recipe) as place:  # a distributed run resumed on 1 process: a group of 1
            run = RunDir(shared_path(root))
            run.check_usable()
            with group_holds(run):
                _check_run(run, recipe, resume)
                if resume:
                    check_resumable(run.root)  # before the data and the run's recipe.yaml are touched
                return distributed.train(recipe, run, resume, place)
    run = RunDir(root)
    run.check_usable()
    with run.exclusive(), sigterm_raises():  # outside its fits (Lightning's), SIGTERM would end it without a word
        _check_run(run, recipe, resume)
        return _train_here(recipe, run, resume)


def _train_here(recipe: Recipe, run: RunDir, resume: bool) -> dict[str, Any]:
    """Trains ``recipe`` in this one process into ``run``; returns (and writes) metrics.json."""
    if recipe.train.embedding_optimizer.fused:
        fused_optimizer(recipe.train.embedding_optimizer)  # an unknown rule fails here, before any work
    place = placement(recipe)
    use_threads(recipe.trainer.num_threads)
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    progress = shows_bars(recipe.trainer.progress_bar)
    recipe.data = resolve_features(recipe.data)  # the run's recipe.yaml lists every feature
    if resume:
        run.check_resumed_inputs(recipe.data)
        for folder in resumed_trainings(run.root):
            if (folder / "last.ckpt").is_file():
                check_best_kept(folder / "last.ckpt")
    prepared = prepare(recipe.data, progress)
    prepared.schema.require_sparse()
    if resume:
        run.check_resumed_encoding(prepared.root)
    task = CTRTask(recipe, prepared.schema)  # a method refused (its budget) leaves nothing in the run directory
    if not resume:
        check_schedule_floors(recipe, task.net)
    run.keep_data(recipe, prepared.root, resume)
    log.info("run directory: %s", run.root)
    log.info("%s", summary(recipe, task.net, prepared))
    session = Session(recipe, run, prepared, progress, place)
    require_rows(recipe, prepared, SPLITS)
    session.open_loaders()
    try:
        check_before_fit(recipe, prepared, len(session.loaders["train"]), task.net, place.world_size)
        if task.net.embedding.stages():
            fitted = train_stages(task, session, resume)
        else:
            fitted = fit(task, session, run.checkpoints, resume_from=run.last if resume else None)
        evaluator = trainer_for(recipe, run, progress, [], logger=False)
        metrics = evaluate_checkpoint(task, fitted.best, session.loaders, evaluator)
    finally:
        session.close()
    metrics.update(
        embedding_bytes=task.net.embedding.stored_bytes(),
        full_embedding_bytes=task.net.embedding.full_bytes(),
        train_samples_per_s=fitted.samples_per_s,
        train_seconds=fitted.seconds,
        epochs=fitted.epochs,
        steps=fitted.steps,
        best_checkpoint=str(fitted.best.resolve().relative_to(run.root.resolve())),
    )
    if fitted.stage_seconds:
        metrics["stage_seconds"] = fitted.stage_seconds
    if run.log_csv.exists():
        plot_curves(run.log_csv, run.curves)
    run.write_metrics(metrics)  # last: metrics.json marks the run finished
    log.info("run directory: %s (metrics.json, checkpoints/, logs/, curves.png)", run.root)
    return metrics


def _check_run(run: RunDir, recipe: Recipe, resume: bool) -> None:
    """Refuses a run directory that does not fit ``resume`` (before any work); a resume of
    another recipe than the run's (its world size aside)."""
    if resume and run.metrics.exists():
        raise UserError(f"{run.root}: this run is finished (metrics.json is written); nothing to resume")
    if resume and not run.started:
        raise UserError(f"{run.root}: nothing to resume (no checkpoint written yet: no checkpoints/last.ckpt, "
                        "checkpoints/last (a distributed run's) or stages/)")
    edit = run.edit_since_start() if resume else None
    if edit:
        raise UserError(f"{run.recipe}: edited since the run began ({edit}); a resume trains the settings the run "
                        "began with: undo the edit, or train the new settings as a new run")
    change = run.settings_change(recipe, ignoring=RESUME_OVERRIDES) if resume else None
    if change:
        raise UserError(f"{run.root}: begun with another recipe ({change}); a resume goes on with the run's "
                        "own recipe.yaml (RunDir(run).load_recipe(), as ctr train --resume does)")
    if not resume and run.holds_run:
        raise UserError(f"{run.root}: already holds a run; continue it with --resume or choose another --out")
    foreign = [] if resume else run.foreign_entries()
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UserError(f"{run.root}: a folder that is not a run directory (it holds {shown}); choose another --out")


def evaluate(run_root: Path, split: str = "test", data: Path | None = None) -> dict[str, Any]:
    """Evaluates the best checkpoint of a finished run on ``split`` of its recipe's data, or
    on every row of ``data`` (a file in the recipe's format; then with the out-of-vocabulary
    counts per feature), encoded with the run's saved schema and vocabularies."""
    run, recipe, ckpt = finished_run(run_root)
    use_threads(recipe.trainer.num_threads)  # as in training: another thread count sums in another order
    progress = shows_bars(recipe.trainer.progress_bar)
    with tempfile.TemporaryDirectory(prefix="ctr-eval-") as tmp:
        encoded = encode_rows(run, recipe, Path(tmp), data, split, progress)
        if data is not None and not encoded.labelled:
            raise UserError(f"{data}: its rows have no labels, and ctr eval scores against them (`ctr predict` "
                            "scores unlabelled rows)")
        target = "test" if data is not None else split
        task = restored_task(run, recipe, encoded.prepared.schema, ckpt)
        session = Session(recipe, run, encoded.prepared, progress, _one_process(placement(recipe)))
        session.open_loaders(splits=(target,))
        try:
            evaluator = trainer_for(recipe, run, progress, [], logger=False)
            metrics: dict[str, Any] = evaluate_checkpoint(task, ckpt, session.loaders, evaluator, splits=(target,))[target]
        finally:
            session.close()
    if data is not None:
        metrics.update(rows=encoded.tally.rows, oov=oov_counts(encoded))
    return metrics


def _one_process(place: Placement) -> Placement:
    """``place`` as the only process: its loaders read every row. A launcher's environment
    (``WORLD_SIZE`` > 1) would give each process a share, scored by nobody else."""
    return replace(place, rank=0, world_size=1)
