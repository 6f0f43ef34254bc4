"""The training lifecycle in one place: its loaders, Lightning's Trainer, one fit, and the
evaluation of a checkpoint (where the run is placed: ``placement.py``).

``runner.py`` (``ctr train`` / ``ctr eval``) and ``stages.py`` (multi-stage methods) call into
this module; it imports neither. The batch size is read here only (the rank and world size:
``placement.py``).
"""

from __future__ import annotations

import csv
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loops.fit_loop import _FitLoop
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ctr.atomic import atomic_path
from ctr.datasets import BatchLoader, Prepared
from ctr.datasets.resident import ResidentLoader
from ctr.errors import UserError, reason, sigterm_to_lightning
from ctr.recipe import Recipe
from ctr.train.callbacks import (
    AtomicCheckpointIO, EvalProgressLines, FiniteLoss, LoaderEpoch, ProgressLines, RandomState, ResumableEarlyStopping,
    RunCheckpoint, RunLog, Throughput, ValidateAtTheEnd, ValidationSummary, rerooted,
)
from ctr.train.checkpoints import load_mapped
from ctr.train.checks import TRAINING_MIN_ROWS
from ctr.train.placement import Placement
from ctr.train.rundir import RunDir
from ctr.train.task import CTRTask, unfinished_epoch
from ctr.train.watch import LOG_EVERY_N_STEPS, PROGRESS_EVERY_N_STEPS, loss_check_interval, read_log_rows

Loader = BatchLoader | ResidentLoader
log = logging.getLogger("ctr.train")


def load_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """A Lightning checkpoint's contents (with ``mmap``, its tensors mapped from the file, not
    read: ``load_mapped``); a missing, empty, truncated or foreign file is a UserError naming it."""
    try:
        ckpt = load_mapped(path) if mmap else torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise UserError(f"{path}: no such checkpoint") from None
    except Exception as err:  # torch.load raises whatever its unpickler meets in a broken file
        raise UserError(f"{path}: not a readable checkpoint ({reason(err, typed=True)})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{path}: not a ctr checkpoint (no state_dict)")
    return ckpt


def check_best_kept(last: Path) -> None:
    """Refuses a resume from Lightning checkpoint ``last`` whose best checkpoint (as the state of
    its checkpoint callbacks names it, re-rooted at ``last``'s folder as a resume reads it) is
    gone or does not load (cut short): the resumed training ends by reading it."""
    folder = os.path.realpath(last.parent)
    for state in load_checkpoint(last, mmap=True).get("callbacks", {}).values():
        best, saved_in = state.get("best_model_path"), state.get("dirpath")
        if best and saved_in:
            best = rerooted(best, saved_in, folder)
        if best and not os.path.exists(best):
            raise UserError(f"{last}: names {best} as its best checkpoint, which is gone; the resume ends by reading "
                            "it: restore it, or train a new run")
        if best:
            try:
                load_checkpoint(Path(best), mmap=True)
            except UserError as err:
                raise UserError(f"{err}; the resume ends by reading it: restore it, or train a new run") from None


def load_weights(task: CTRTask, ckpt: Path) -> None:
    """Loads the weights of checkpoint ``ckpt`` into ``task`` (a Lightning file, or a
    distributed run's DCP folder); a UserError when they do not fit."""
    if ckpt.is_dir():
        from ctr.train.checkpoints import read_state  # they import this module
        from ctr.train.sharded import load_distributed_weights

        load_distributed_weights(task.net, ckpt, read_state(ckpt)["sharded"])
        return
    load_saved(task, load_checkpoint(ckpt), ckpt)


def load_saved(task: CTRTask, saved: dict[str, Any], path: Path) -> None:
    """Loads checkpoint ``saved`` (read from ``path``) into ``task``; a UserError naming
    ``path`` when its weights do not fit the model (a recipe edited since, say)."""
    try:
        task.load_state_dict(saved["state_dict"])
    except RuntimeError as err:
        raise UserError(f"{path}: does not fit this run's model ({reason(err)})") from None


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
                     min_rows=TRAINING_MIN_ROWS if training else 0, rank=self.place.rank,
                     world_size=self.place.world_size)
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
        resume_from: Path | None = None, log_root: Path | None = None, score_start: bool = False) -> Fitted:
    """One Lightning fit of ``task``: checkpoints in ``ckpt_dir``, the CSV log in
    ``<log_root>/logs`` (default: the run directory). With ``score_start`` (a stage that
    goes on training weights an earlier stage trained) the weights it starts from are
    validated first and are its best until an epoch beats them."""
    recipe = session.recipe
    throughput = Throughput()
    checkpoint = _checkpoint(recipe, ckpt_dir)
    finite = FiniteLoss(every=loss_check_interval(session.place.device, LOG_EVERY_N_STEPS))
    callbacks = [finite, LoaderEpoch(), RandomState(), checkpoint,
                 _last_checkpoint(recipe, ckpt_dir), throughput, ValidateAtTheEnd(),
                 ValidationSummary(recipe.train.best_by[0] if recipe.train.early_stop else None)]
    if not session.progress:  # no bar (stderr is not a terminal): progress lines in the log instead
        callbacks.append(ProgressLines(every=PROGRESS_EVERY_N_STEPS))
    stopper = None
    if recipe.train.early_stop:
        stop = recipe.train.early_stop
        # checked after each validation, not at epoch ends: those inside an epoch count too
        stopper = ResumableEarlyStopping(monitor=stop.monitor, mode=stop.direction, patience=stop.patience,
                                         min_delta=stop.min_delta, check_on_train_epoch_end=False)
        callbacks.append(stopper)
    trainer = trainer_for(recipe, session.run, session.progress, callbacks, epochs=epochs, max_steps=max_steps,
                          log_root=log_root)
    begun = 0
    if resume_from is not None:
        saved = load_checkpoint(resume_from)
        load_saved(task, saved, resume_from)  # Lightning's own load would raise a traceback
        log.info("resuming from %s, written at step %d", resume_from, saved["global_step"])
        begun = _resume_log(task, trainer, saved)
    elif score_start:
        _start_as_best(task, session, checkpoint, stopper)
    loaders = session.loaders
    with sigterm_to_lightning():
        trainer.fit(task, loaders["train"], loaders["valid"], ckpt_path=str(resume_from) if resume_from else None)
    if trainer.received_sigterm:  # after the fit's last check (its last validation): Lightning let the fit end
        raise SIGTERMException
    task.write_open_epoch()  # a resumed fit may end in its checkpoint's epoch without running the epoch's end
    if not checkpoint.best_model_path and not (ckpt_dir / "last.ckpt").exists():
        # a fit that wrote no checkpoint (ValidateAtTheEnd validates a cut one): its trained weights
        trainer.save_checkpoint(ckpt_dir / "last.ckpt")
    best = Path(checkpoint.best_model_path or ckpt_dir / "last.ckpt")
    return Fitted(best, throughput.seconds, throughput.samples_per_second, max(trainer.current_epoch, begun),
                  trainer.global_step)


def _resume_log(task: CTRTask, trainer: L.Trainer, saved: dict[str, Any]) -> int:
    """Keeps the log rows written up to checkpoint ``saved`` and, when it was written inside an
    epoch whose lr row they lack, has ``task`` log that row (``open_epoch``); the epochs begun
    by then (a fit that ends at the checkpoint, early stopped there, counts that epoch)."""
    kept = keep_log_rows(trainer, saved["global_step"])
    epoch = unfinished_epoch(saved)
    task.open_epoch = None if epoch is None or epoch in lr_epochs(kept) else epoch
    return 0 if epoch is None else epoch + 1


def _validated_now(task: CTRTask, session: Session) -> tuple[L.Trainer, dict[str, float]]:
    """A trainer outside the fit (no callbacks, no log) and its validation of ``task`` now;
    its ``save_checkpoint`` writes ``task``'s weights."""
    scorer = trainer_for(session.recipe, session.run, False, [], logger=False)
    return scorer, scorer.validate(task, session.loaders["valid"], verbose=False)[0]


def _start_as_best(task: CTRTask, session: Session, checkpoint: RunCheckpoint,
                   stopper: ResumableEarlyStopping | None) -> None:
    """Validates ``task`` before its fit, saves its weights as ``best.ckpt`` and makes them
    the best so far of ``checkpoint`` (and of early stopping's patience). Nothing is saved
    when the monitored metric is not a validation one (``train/loss``): the start has no
    value of it."""
    scorer, scores = _validated_now(task, session)
    if checkpoint.monitor not in scores:
        log.info("stage start not scored: %s is not a validation metric", checkpoint.monitor)
        return
    value = scores[checkpoint.monitor]
    path = Path(checkpoint.dirpath) / "best.ckpt"
    scorer.save_checkpoint(path, weights_only=True)
    checkpoint.start_from(path, value)
    if stopper is not None:
        stopper.best_score = torch.tensor(value)
    log.info("stage start: %s %.5f (the stage's best until an epoch beats it)", checkpoint.monitor, value)


def evaluate_checkpoint(task: CTRTask, ckpt: Path, loaders: dict[str, Loader], trainer: L.Trainer,
                        splits: tuple[str, ...] = ("valid", "test")) -> dict[str, Any]:
    """Metrics of the weights in ``ckpt`` on each of ``splits``, and the seconds the last took."""
    load_weights(task, ckpt)
    result: dict[str, Any] = {}
    for split in splits:
        task.eval_split = split
        start = time.perf_counter()
        trainer.test(task, loaders[split], verbose=False)
        result[split] = task.last_metrics[split]
    result["inference_seconds"] = time.perf_counter() - start
    return result


def keep_log_rows(trainer: L.Trainer, global_step: int) -> list[dict[str, str]]:
    """Keeps the CSV log rows written up to the checkpoint a resumed run starts from, saved
    at training step ``global_step`` mid-epoch or at an epoch's end (a row's ``step`` is the
    training step it was logged at, minus one), written back whole before the log's writer is
    made, which then keeps them (``RunLog.keep``); later rows are redone. Returns the rows kept
    (``read_log_rows``)."""
    logger = trainer.logger
    if not isinstance(logger, RunLog):
        return []
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return []
    header, rows = read_log_rows(path, global_step)
    if header:  # the kept rows replace the log whole, before its writer is made
        with atomic_path(path) as tmp, tmp.open("w", newline="") as file:
            out = csv.DictWriter(file, fieldnames=header)
            out.writeheader()
            out.writerows(rows)
    logger.keep = bool(header)  # else the writer removes a log with no row to keep
    logger.experiment.metrics_keys = header
    return rows


def lr_epochs(rows: list[dict[str, str]]) -> set[int]:
    """The epochs whose lr row (``lr/...``, logged at an epoch's end) is among log ``rows``."""
    return {int(row["epoch"]) for row in rows if any(value and key.startswith("lr/") for key, value in row.items())}


def _checkpoint(recipe: Recipe, dirpath: Path) -> RunCheckpoint:
    monitor, mode = recipe.train.best_by
    return RunCheckpoint(
        dirpath=dirpath,
        filename="best",
        monitor=monitor,
        mode=mode,
        auto_insert_metric_name=False,
        enable_version_counter=False,
        save_on_train_epoch_end=_at_epoch_end(recipe),
    )


def _last_checkpoint(recipe: Recipe, dirpath: Path) -> RunCheckpoint:
    """``last.ckpt`` after every validation (what a resume continues from). Lightning's own
    ``save_last`` rewrites it only when ``best.ckpt`` changes."""
    return RunCheckpoint(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, enable_version_counter=False,
                         save_on_train_epoch_end=_at_epoch_end(recipe))


def _at_epoch_end(recipe: Recipe) -> bool | None:
    """False (after each validation) with ``train.eval_every_n_steps``: Lightning would read
    its ``val_check_interval`` of 1 step as 1.0 epoch and save at epoch ends only; else its
    own choice (after the epoch's validation)."""
    return False if recipe.train.eval_every_n_steps else None


def trainer_for(recipe: Recipe, run: RunDir, progress: bool, callbacks: list, logger: bool = True,
                epochs: int | None = None, max_steps: int | None = None, log_root: Path | None = None) -> L.Trainer:
    """Lightning's Trainer for ``recipe`` in this one process (logs under ``log_root`` or the
    run directory)."""
    cfg, train = recipe.trainer, recipe.train
    loggers = [RunLog(log_root or run.root, name="logs", version="")] if logger else False
    trainer = L.Trainer(
        accelerator=cfg.accelerator,
        devices=1,  # one process; a distributed run trains in ctr.train.distributed
        strategy=cfg.strategy,
        precision=cfg.precision,
        max_epochs=epochs or train.epochs,
        max_steps=max_steps or train.max_steps or -1,
        val_check_interval=train.eval_every_n_steps or 1.0,
        callbacks=callbacks if progress else [*callbacks, EvalProgressLines()],  # no bar: lines while scoring
        logger=loggers,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=LOG_EVERY_N_STEPS,
        use_distributed_sampler=False,
        default_root_dir=run.root,
        plugins=[AtomicCheckpointIO()],
    )
    _restore_as_epoch_based(trainer)
    return trainer


class _ResumingFitLoop(_FitLoop):
    """Lightning's fit loop, restored from a checkpoint the same way with or without
    ``max_steps``. With ``max_steps`` Lightning counts training as "iteration-based" and then,
    on a resume, always restarts the checkpoint's epoch (even one whose end was done: its
    end ran again, the next epoch was counted as done untrained, and a run resumed from an
    epoch's end trained an epoch less and logged its steps one later) and does not set the
    epoch counter to the epochs done. Only those two restore steps read it: training still
    stops at ``max_steps`` (the loops compare the global step with it themselves)."""

    def _iteration_based_training(self) -> bool:
        return False


def _restore_as_epoch_based(trainer: L.Trainer) -> None:
    """Gives ``trainer`` a ``_ResumingFitLoop`` in place of its fit loop (same epoch limits,
    same epoch loop)."""
    loop = trainer.fit_loop
    if type(loop) is not _FitLoop:  # a Lightning whose fit loop differs: its own restore
        return
    resuming = _ResumingFitLoop(trainer, min_epochs=loop.min_epochs, max_epochs=loop.max_epochs)
    resuming.epoch_loop = loop.epoch_loop
    trainer.fit_loop = resuming


def quiet_lightning() -> None:
    """Lightning's internal notices, which say nothing to a ctr user, are not shown."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (
        ".*does not have many workers.*",
        ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
        ".*Sparse invariant checks are implicitly disabled.*",
        ".*no `val_dataloader`.*",
        ".*number of training batches .* is smaller than the logging interval.*",
        ".*could not find the monitored key.*",
        ".*Experiment logs directory .* exists and is not empty.*",
        ".*Checkpoint directory .* exists and is not empty.*",
        ".*The dirpath has changed.*",
        ".*resuming from a checkpoint that ended before the epoch ended.*",
        ".*`training_step` returned `None`.*",
    ):
        warnings.filterwarnings("ignore", message=message)
