"""``ctr train`` and ``ctr eval``: data → loaders → the training loop → run directory."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L

from ctr.datasets import Prepared, prepare
from ctr.datasets.progress import shows_bars
from ctr.datasets.source import SPLITS, resolve_features
from ctr.errors import UserError, scoring_a_saved_run, sigterm_raises
from ctr.recipe import Recipe
from ctr.train import distributed
from ctr.train.checkpoints import holds_distributed_checkpoints, resumed_trainings
from ctr.train.launch import launched, require_one_process
from ctr.train.checks import check_before_fit, check_schedule_floors, require_rows
from ctr.train.loop import (
    Fitted, Session, check_best_kept, evaluate_checkpoint, fit, quiet_lightning, trainer_for,
)
from ctr.train.optim import require_fused_form
from ctr.train.placement import Placement, placement, use_threads
from ctr.train.plots import plot_curves
from ctr.train.rundir import RunDir, default_run_dir
from ctr.train.stage_files import building_net
from ctr.train.saved import encode_rows, finished_run, oov_counts, restored_task
from ctr.train.stages import train_stages
from ctr.train.net import summary
from ctr.train.task import CTRTask

log = logging.getLogger("ctr.train")


def train(recipe: Recipe, out: Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Trains ``recipe`` into run directory ``out``; returns (and writes) metrics.json."""
    require_one_process(recipe)
    root = out or default_run_dir(recipe)
    if launched() or (resume and holds_distributed_checkpoints(root)):  # a distributed run resumed on 1 process
        return distributed.train_in_group(recipe, root, resume)
    quiet_lightning()
    run = RunDir(root)
    run.check_usable()
    with run.exclusive(), sigterm_raises():  # outside its fits (Lightning's), SIGTERM would end it without a word
        run.check_start(recipe, resume)
        with run.undone_on_refusal():  # a check of the prepared data, a model's first batch: no half run left
            return _train_here(recipe, run, resume)


def _train_here(recipe: Recipe, run: RunDir, resume: bool) -> dict[str, Any]:
    """Trains ``recipe`` in this one process into ``run``; returns (and writes) metrics.json."""
    require_fused_form(recipe.train.embedding_optimizer)
    place = placement(recipe)
    use_threads(recipe.trainer.num_threads)
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    progress = shows_bars(recipe.trainer.progress_bar)
    prepared, task = _prepared_task(recipe, run, resume, progress)
    session = Session(recipe, run, prepared, progress, place)
    require_rows(recipe, prepared, SPLITS)
    session.open_loaders()
    try:
        fitted = _fitted(task, session, resume)
        evaluator = trainer_for(recipe, run, progress, [], logger=False)
        metrics = evaluate_checkpoint(task, fitted.best, session.loaders, evaluator)
    finally:
        session.close()
    metrics.update(_training_figures(task, fitted, run))
    _write_run(run, metrics)
    return metrics


def _prepared_task(recipe: Recipe, run: RunDir, resume: bool, progress: bool) -> tuple[Prepared, CTRTask]:
    """The run's data, prepared (read from the cache when it holds them), and its task; a
    resume is first refused when its inputs or encoding changed or a best checkpoint it ends
    by reading is gone. The run directory keeps the data's recipe and schema."""
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
    with building_net(run, resume):
        task = CTRTask(recipe, prepared.schema)  # a method refused (its budget) leaves nothing in the run directory
    if not resume:
        check_schedule_floors(recipe, task.net)
    run.keep_data(recipe, prepared.root, resume)
    log.info("run directory: %s", run.root)
    log.info("%s", summary(recipe, task.net, prepared))
    return prepared, task


def _fitted(task: CTRTask, session: Session, resume: bool) -> Fitted:
    """Trains ``task`` in ``session`` (stage by stage for a multi-stage method), after the
    checks that need its loaders; its best checkpoint and training figures."""
    recipe, run = session.recipe, session.run
    check_before_fit(recipe, session.prepared, len(session.loaders["train"]), task.net, session.place.world_size)
    if task.net.embedding.stages():
        return train_stages(task, session, resume)
    return fit(task, session, run.checkpoints, resume_from=run.last if resume else None)


def _training_figures(task: CTRTask, fitted: Fitted, run: RunDir) -> dict[str, Any]:
    """What metrics.json says of the training beside the metrics: the embedding's bytes,
    speed, time, epochs, steps, the best checkpoint (relative to ``run``), stage seconds."""
    figures = dict(
        embedding_bytes=task.net.embedding.stored_bytes(),
        full_embedding_bytes=task.net.embedding.full_bytes(),
        train_samples_per_s=fitted.samples_per_s,
        train_seconds=fitted.seconds,
        epochs=fitted.epochs,
        steps=fitted.steps,
        best_checkpoint=str(fitted.best.resolve().relative_to(run.root.resolve())),
    )
    if fitted.stage_seconds:
        figures["stage_seconds"] = fitted.stage_seconds
    return figures


def _write_run(run: RunDir, metrics: dict[str, Any]) -> None:
    """Plots the learning curves and writes ``metrics`` (last: metrics.json marks ``run`` finished)."""
    if run.log_csv.exists():
        plot_curves(run.log_csv, run.curves)
    run.write_metrics(metrics)
    log.info("run directory: %s (metrics.json, checkpoints/, logs/, curves.png)", run.root)


@scoring_a_saved_run()
def evaluate(run_root: Path, split: str = "test", data: Path | None = None) -> dict[str, Any]:
    """Evaluates the best checkpoint of a finished run on ``split`` of its recipe's data, or
    on every row of ``data`` (a file in the recipe's format; then with the out-of-vocabulary
    counts per feature), encoded with the run's saved schema and vocabularies."""
    run, recipe, ckpt = finished_run(run_root, split=split if data is None else None)
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
