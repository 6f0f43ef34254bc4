"""The training lifecycle in one place: where the run is placed, its loaders, Lightning's
Trainer, one fit, and the evaluation of a checkpoint.

``runner.py`` (``ctr train`` / ``ctr eval``) and ``stages.py`` (multi-stage methods) call into
this module; it imports neither. The batch size, rank and world size are read here only.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from ctr.datasets import BatchLoader, Prepared
from ctr.datasets.resident import ResidentLoader
from ctr.recipe import Recipe
from ctr.train.callbacks import Throughput, ValidationSummary
from ctr.train.rundir import RunDir
from ctr.train.task import CTRTask

Loader = BatchLoader | ResidentLoader
log = logging.getLogger("ctr.train")


@dataclass(frozen=True)
class Placement:
    """Where this process trains: its rank among ``world_size`` processes and its device."""

    rank: int
    world_size: int
    device: torch.device


def placement(recipe: Recipe) -> Placement:
    """This process's placement, from the recipe's accelerator and the launcher's environment
    (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` as torchrun sets them; one process otherwise)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    accelerator = recipe.trainer.accelerator
    wants_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if wants_gpu else torch.device("cpu")
    return Placement(rank, world, device)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; all cores where there is none)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def use_threads(num_threads: int | str | None) -> None:
    """Sets torch's CPU threads (``trainer.num_threads``: a number, ``auto`` = the usable cores,
    None = torch's choice) and warns when the machine is already busier than its cores: threads
    then wait for each other (on a loaded 2-core machine 2 threads ran 10-20x slower than 1)."""
    cores = usable_cores()
    if num_threads is not None:
        torch.set_num_threads(cores if num_threads == "auto" else num_threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > cores:
        log.warning("the machine is oversubscribed: load average %.1f over %d usable cores; training runs %d torch"
                    " threads (fewer, e.g. trainer.num_threads=1, can be much faster)",
                    load, cores, torch.get_num_threads())


@dataclass
class Session:
    """The fixed parts of one training run: recipe, run directory, data, placement, loaders."""

    recipe: Recipe
    run: RunDir
    prepared: Prepared
    progress: bool
    place: Placement
    loaders: dict[str, Loader] = field(default_factory=dict)

    def loader(self, split: str, training: bool = False, seed_offset: int = 0) -> Loader:
        """A loader of ``split``: shuffled batches of the training batch size when
        ``training``, else evaluation batches in file order; this rank's share either way."""
        recipe, data = self.recipe, self.recipe.data
        size = recipe.train.batch_size if training else recipe.train.eval_batch_size
        drop_last = training and recipe.trainer.compile  # a compiled model would recompile for a smaller last batch
        where = dict(shuffle=training, seed=recipe.seed + seed_offset, drop_last=drop_last,
                     rank=self.place.rank, world_size=self.place.world_size)
        folder, schema = self.prepared.split_dir(split), self.prepared.schema
        if data.on_device:
            return ResidentLoader(folder, schema, size, self.place.device, **where)
        return BatchLoader(folder, schema, size, prefetch=data.prefetch, shuffle_buffer=data.shuffle_buffer,
                           device=self.place.device, **where)

    def open_loaders(self, splits: tuple[str, ...] = ("train", "valid", "test")) -> None:
        """The run's loaders: ``train`` for training, the others for evaluation."""
        self.loaders = {split: self.loader(split, training=split == "train") for split in splits}

    def close(self) -> None:
        for loader in self.loaders.values():
            loader.close()


@dataclass
class Fitted:
    """What a fit produced: the best checkpoint and training figures."""

    best: Path
    seconds: float
    samples_per_s: float
    epochs: int
    steps: int
    stage_seconds: dict[str, float] = field(default_factory=dict)


def fit(task: CTRTask, session: Session, ckpt_dir: Path, epochs: int | None = None, max_steps: int | None = None,
        resume_from: Path | None = None, log_root: Path | None = None) -> Fitted:
    """One Lightning fit of ``task``: checkpoints in ``ckpt_dir``, the CSV log in
    ``<log_root>/logs`` (default: the run directory)."""
    recipe = session.recipe
    throughput = Throughput()
    checkpoint = _checkpoint(recipe, ckpt_dir)
    callbacks = [checkpoint, _last_checkpoint(ckpt_dir), throughput, ValidationSummary()]
    if recipe.train.early_stop:
        stop = recipe.train.early_stop
        # checked after validation only: a run cut short by max_steps may end before the first one
        callbacks.append(
            EarlyStopping(monitor=stop.monitor, mode=stop.mode, patience=stop.patience, min_delta=stop.min_delta,
                          check_on_train_epoch_end=False)
        )
    trainer = trainer_for(recipe, session.run, session.progress, callbacks, epochs=epochs, max_steps=max_steps,
                          log_root=log_root)
    loaders = session.loaders
    trainer.fit(task, loaders["train"], loaders["valid"], ckpt_path=str(resume_from) if resume_from else None)
    best = Path(checkpoint.best_model_path or ckpt_dir / "last.ckpt")
    return Fitted(best, throughput.seconds, throughput.samples_per_second, trainer.current_epoch, trainer.global_step)


def evaluate_checkpoint(task: CTRTask, ckpt: Path, loaders: dict[str, Loader], trainer: L.Trainer,
                        splits: tuple[str, ...] = ("valid", "test")) -> dict[str, Any]:
    """Metrics of the weights in ``ckpt`` on each of ``splits``, and the seconds the last took."""
    task.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"])
    result: dict[str, Any] = {}
    for split in splits:
        task.eval_split = split
        start = time.perf_counter()
        trainer.test(task, loaders[split], verbose=False)
        result[split] = task.last_metrics[split]
    result["inference_seconds"] = time.perf_counter() - start
    return result


def _checkpoint(recipe: Recipe, dirpath: Path) -> ModelCheckpoint:
    stop = recipe.train.early_stop
    return ModelCheckpoint(
        dirpath=dirpath,
        filename="best",
        monitor=stop.monitor if stop else "valid/auc",
        mode=stop.mode if stop else "max",
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )


def _last_checkpoint(dirpath: Path) -> ModelCheckpoint:
    """``last.ckpt`` after every validation (what a resume continues from). Lightning's own
    ``save_last`` rewrites it only when ``best.ckpt`` changes."""
    return ModelCheckpoint(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, enable_version_counter=False)


def trainer_for(recipe: Recipe, run: RunDir, progress: bool, callbacks: list, logger: bool = True,
                epochs: int | None = None, max_steps: int | None = None, log_root: Path | None = None) -> L.Trainer:
    """Lightning's Trainer for ``recipe`` (logs under ``log_root`` or the run directory)."""
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


def quiet_lightning() -> None:
    """Lightning's internal notices, which say nothing to a ctr user, are not shown."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (
        ".*does not have many workers.*",
        ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
        ".*Sparse invariant checks are implicitly disabled.*",
        ".*no `val_dataloader`.*",
    ):
        warnings.filterwarnings("ignore", message=message)
