"""``ctr train`` and ``ctr eval``: data → loaders → Lightning → run directory."""

from __future__ import annotations

import logging
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from ctr.datasets import BatchLoader, Prepared, prepare
from ctr.datasets.resident import ResidentLoader
from ctr.errors import UserError
from ctr.recipe import Recipe
from ctr.train.callbacks import Throughput, ValidationSummary
from ctr.train.optim import fused_optimizer
from ctr.train.plots import plot_curves
from ctr.train.rundir import RunDir
from ctr.train.stages import restore_stages, train_stages
from ctr.train.task import CTRTask

log = logging.getLogger("ctr.train")


def default_run_dir(recipe: Recipe) -> Path:
    return Path(recipe.output.dir or f"runs/{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}")


@dataclass
class Session:
    """The fixed parts of one training run: recipe, run directory, data, loaders."""

    recipe: Recipe
    run: RunDir
    prepared: Prepared
    progress: bool
    loaders: dict[str, BatchLoader]


@dataclass
class Fitted:
    """What a fit produced: the best checkpoint and training figures."""

    best: Path
    seconds: float
    samples_per_s: float
    epochs: int
    steps: int
    stage_seconds: dict[str, float] = field(default_factory=dict)


def train(recipe: Recipe, out: Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Trains ``recipe`` into run directory ``out``; returns (and writes) metrics.json."""
    _quiet_lightning()
    run = RunDir(out or default_run_dir(recipe))
    started = run.last.exists() or run.stage_progress.exists()
    if resume and not started:
        raise UserError(f"{run.root}: nothing to resume (no checkpoints/last.ckpt and no finished stage)")
    if not resume and (started or run.metrics.exists()):
        raise UserError(f"{run.root}: already holds a run; continue it with --resume or choose another --out")
    if recipe.train.embedding_optimizer.fused:
        fused_optimizer(recipe.train.embedding_optimizer)  # an unknown rule fails here, before any work
    if recipe.trainer.num_threads:
        torch.set_num_threads(recipe.trainer.num_threads)
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    progress = _progress(recipe)
    prepared = prepare(recipe.data, recipe.seed, progress)
    run.write_recipe(recipe)
    run.copy_schema(prepared.root)
    task = CTRTask(recipe, prepared.schema)
    _log_summary(task, prepared)
    evaluator = _trainer(recipe, run, progress, [], logger=False)
    session = Session(recipe, run, prepared, progress, _loaders(recipe, prepared, evaluator))
    try:
        if task.net.embedding.stages():
            fitted = train_stages(task, session, resume, fit)
        else:
            fitted = fit(task, session, run.checkpoints, resume_from=run.last if resume else None)
        metrics = evaluate_checkpoint(task, fitted.best, session.loaders, evaluator)
    finally:
        for loader in session.loaders.values():
            loader.close()
    metrics.update(
        embedding_bytes=task.net.embedding.memory_bytes(),
        full_embedding_bytes=task.net.embedding.full_bytes(),
        train_samples_per_s=fitted.samples_per_s,
        train_seconds=fitted.seconds,
        epochs=fitted.epochs,
        steps=fitted.steps,
        best_checkpoint=str(fitted.best.resolve().relative_to(run.root.resolve())),
    )
    if fitted.stage_seconds:
        metrics["stage_seconds"] = fitted.stage_seconds
    run.write_metrics(metrics)
    if run.log_csv.exists():
        plot_curves(run.log_csv, run.curves)
    return metrics


def fit(
    task: CTRTask,
    session: Session,
    ckpt_dir: Path,
    epochs: int | None = None,
    max_steps: int | None = None,
    resume_from: Path | None = None,
    log_root: Path | None = None,
) -> Fitted:
    """One Lightning fit of ``task``: checkpoints in ``ckpt_dir``, the CSV log in
    ``<log_root>/logs`` (default: the run directory)."""
    recipe = session.recipe
    throughput = Throughput()
    checkpoint = _checkpoint(recipe, ckpt_dir)
    callbacks = [checkpoint, throughput, ValidationSummary()]
    if recipe.train.early_stop:
        stop = recipe.train.early_stop
        # checked after validation only: a run cut short by max_steps may end before the first one
        callbacks.append(
            EarlyStopping(monitor=stop.monitor, mode=stop.mode, patience=stop.patience, check_on_train_epoch_end=False)
        )
    trainer = _trainer(recipe, session.run, session.progress, callbacks, epochs=epochs, max_steps=max_steps, log_root=log_root)
    loaders = session.loaders
    trainer.fit(task, loaders["train"], loaders["valid"], ckpt_path=str(resume_from) if resume_from else None)
    best = Path(checkpoint.best_model_path or ckpt_dir / "last.ckpt")
    return Fitted(best, throughput.seconds, throughput.samples_per_second, trainer.current_epoch, trainer.global_step)


def evaluate_checkpoint(task: CTRTask, ckpt: Path, loaders: dict[str, BatchLoader], trainer: L.Trainer) -> dict[str, Any]:
    """Valid and test metrics of the weights in ``ckpt``, and the seconds the test split took."""
    task.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"])
    result: dict[str, Any] = {}
    for split in ("valid", "test"):
        task.eval_split = split
        start = time.perf_counter()
        trainer.test(task, loaders[split], verbose=False)
        result[split] = task.last_metrics[split]
    result["inference_seconds"] = time.perf_counter() - start
    return result


def evaluate(run_root: Path, split: str = "test") -> dict[str, float]:
    """Re-evaluates the best checkpoint of a finished run on ``split``."""
    _quiet_lightning()
    run = RunDir(run_root)
    recipe = run.load_recipe()
    metrics = run.read_metrics() if run.metrics.exists() else {}
    ckpt = run.root / metrics.get("best_checkpoint", "checkpoints/best.ckpt")
    if not ckpt.exists():
        raise UserError(f"{run.root}: no checkpoint at {ckpt}")
    prepared = prepare(recipe.data, recipe.seed, _progress(recipe))
    task = CTRTask(recipe, prepared.schema)
    if task.net.embedding.stages():
        restore_stages(task.net, run)
    trainer = _trainer(recipe, run, _progress(recipe), [], logger=False)
    loaders = _loaders(recipe, prepared, trainer, splits=(split,))
    task.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"])
    task.eval_split = split
    trainer.test(task, loaders[split], verbose=False)
    return task.last_metrics[split]


def _loaders(recipe: Recipe, prepared: Prepared, trainer: L.Trainer, splits=("train", "valid", "test")):
    data, train = recipe.data, recipe.train
    rank, world, device = trainer.global_rank, trainer.world_size, trainer.strategy.root_device
    loaders = {}
    for split in splits:
        training = split == "train"
        size = train.batch_size if training else train.eval_batch_size
        # a compiled model would recompile for an epoch's smaller last batch: training drops it
        drop_last = training and recipe.trainer.compile
        where = dict(shuffle=training, seed=recipe.seed, drop_last=drop_last, rank=rank, world_size=world)
        if data.on_device:
            loaders[split] = ResidentLoader(prepared.split_dir(split), prepared.schema, size, device, **where)
        else:
            loaders[split] = BatchLoader(prepared.split_dir(split), prepared.schema, size, prefetch=data.prefetch,
                                         shuffle_buffer=data.shuffle_buffer, device=device, **where)
    return loaders


def _checkpoint(recipe: Recipe, dirpath: Path) -> ModelCheckpoint:
    stop = recipe.train.early_stop
    return ModelCheckpoint(
        dirpath=dirpath,
        filename="best",
        monitor=stop.monitor if stop else "valid/auc",
        mode=stop.mode if stop else "max",
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )


def _trainer(
    recipe: Recipe,
    run: RunDir,
    progress: bool,
    callbacks: list,
    logger: bool = True,
    epochs: int | None = None,
    max_steps: int | None = None,
    log_root: Path | None = None,
) -> L.Trainer:
    cfg, train = recipe.trainer, recipe.train
    loggers = [CSVLogger(log_root or run.root, name="logs", version="")] if logger else False
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        precision=cfg.precision,
        max_epochs=epochs or train.epochs,
        max_steps=max_steps or train.max_steps or -1,
        val_check_interval=train.eval_every_n_steps or 1.0,
        callbacks=callbacks,
        logger=loggers,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=20,
        use_distributed_sampler=False,
        default_root_dir=run.root,
    )


def _log_summary(task: CTRTask, prepared: Prepared) -> None:
    embedding = task.net.embedding
    dense = sum(p.numel() for p in task.net.model.parameters())
    splits = prepared.report["splits"]
    log.info(
        "data %s: train %d, valid %d, test %d rows | embedding %s: %.2f MB (full %.2f MB) | model %s: %d dense params",
        prepared.root.name, splits["train"]["rows"], splits["valid"]["rows"], splits["test"]["rows"],
        task.recipe.embedding.method, embedding.memory_bytes() / 1e6, embedding.full_bytes() / 1e6,
        task.recipe.model.name, dense,
    )


def _progress(recipe: Recipe) -> bool:
    flag = recipe.trainer.progress_bar
    return sys.stderr.isatty() if flag is None else flag


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (
        ".*does not have many workers.*",
        ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
        ".*Sparse invariant checks are implicitly disabled.*",
    ):
        warnings.filterwarnings("ignore", message=message)
