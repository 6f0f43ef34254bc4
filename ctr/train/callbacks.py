"""Callbacks: training throughput, and a one-line summary per validation; the checkpoint
writer and the CSV logger of a one-process fit."""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins import TorchCheckpointIO

from ctr.atomic import atomic_path
from ctr.datasets.progress import RowProgress
from ctr.train.generators import random_state, set_random_state
from ctr.train.watch import diverged, progress_every, warn_if_not_finite

log = logging.getLogger("ctr.train")


class Throughput(L.Callback):
    """Measures training samples per second, excluding validation time."""

    def __init__(self) -> None:
        self.samples = 0
        self.seconds = 0.0
        self._epoch_start: float | None = None
        self._paused = 0.0
        self._validation_start = 0.0

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """Starts the clock (a run resumed mid-epoch has no epoch start)."""
        self._epoch_start, self._paused = time.perf_counter(), 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._epoch_start, self._paused = time.perf_counter(), 0.0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.samples += batch.size

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._paused += time.perf_counter() - self._validation_start

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.seconds += self._epoch_seconds()
        self._epoch_start = None

    def _epoch_seconds(self) -> float:
        """Training seconds of the running epoch so far (0 between epochs)."""
        return 0.0 if self._epoch_start is None else time.perf_counter() - self._epoch_start - self._paused

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0

    def state_dict(self) -> dict[str, Any]:
        """Samples and seconds so far (a running epoch's included: a checkpoint may be
        written mid-epoch): a resumed run's totals sum over its pieces."""
        return {"samples": self.samples, "seconds": self.seconds + self._epoch_seconds()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.samples, self.seconds = state_dict["samples"], state_dict["seconds"]


class LoaderEpoch(L.Callback):
    """Sets the training loader's epoch to the trainer's before each epoch: a resumed run
    shuffles its epochs as the uninterrupted run did (the loaders seed each epoch's order
    by its number). Within an epoch, the loader's position is in the checkpoint (Lightning
    saves and restores its ``state_dict``)."""

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        trainer.train_dataloader.follow_epoch(trainer.current_epoch)


class RandomState(L.Callback):
    """Saves the random generators in each checkpoint and restores them on resume (dropout
    and any sampling continue as without the interruption)."""

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["ctr_random_state"] = random_state()

    def on_load_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("ctr_random_state")
        if state is not None:
            set_random_state(state)


class ResumableEarlyStopping(EarlyStopping):
    """Lightning's EarlyStopping that stays stopped across a resume: its checkpoint keeps why
    it stopped, but not the trainer's ``should_stop``, so a run killed after early stopping
    ended its training (during the final evaluation, say) trained on when resumed."""

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.stopping_reason != EarlyStoppingReason.NOT_STOPPED:
            trainer.should_stop = True


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing beside the checkpoint and renaming it in place
    (``atomic_path``). Lightning's own writes into ``$TMPDIR`` and moves the file: a copy when
    the run is on another file system, so a kill inside it left a cut ``last.ckpt`` that no
    resume could read, and its temporary in ``$TMPDIR``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as file:
            writes = _RecordedWrites(file)
            try:
                torch.save(checkpoint, writes)
            except RuntimeError:  # torch's writer reports a failed write as a cut file ("unexpected pos")
                if writes.error is None:
                    raise
                raise writes.error from None


class RunLog(CSVLogger):
    """Lightning's CSV logger of a fit's ``metrics.csv``, written by a ``RunLogWriter``: set
    ``keep`` before its writer is made (a resumed fit, ``keep_log_rows``) to go on with the
    log there, else a new log replaces it."""

    keep = False

    @property
    @rank_zero_experiment
    def experiment(self) -> RunLogWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = RunLogWriter(self.log_dir, self.keep)
        return self._experiment


class RunLogWriter(ExperimentWriter):
    """Lightning's CSV writer whose rewrite of the log under a new header (a column's first
    row) replaces it atomically (``atomic_path``; Lightning wrote over it in place, and a kill
    there cut the rows a resume keeps), and which, with ``keep``, leaves the log it finds
    (Lightning removes it as the writer is made)."""

    def __init__(self, log_dir: str, keep: bool) -> None:
        self.keep = keep
        super().__init__(log_dir)

    def save(self) -> None:
        """Lightning's save, with the columns known before it put back where it fails: Lightning
        takes a new column into ``metrics_keys`` before the rewrite under the new header, so a
        save after a failed rewrite (``finalize``'s) appended rows of one more field than the
        header's."""
        keys = list(self.metrics_keys)
        try:
            super().save()
        except BaseException:
            self.metrics_keys = keys
            raise

    def _check_log_dir_exists(self) -> None:
        if not self.keep:
            super()._check_log_dir_exists()

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as file:
            rows = list(csv.DictReader(file))
        with atomic_path(self.metrics_file_path) as tmp, tmp.open("w", newline="") as file:
            out = csv.DictWriter(file, fieldnames=fieldnames)
            out.writeheader()
            out.writerows(rows)


class _RecordedWrites:
    """A binary file whose first failed write is kept in ``error`` (torch.save's writer drops it)."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.file.flush()


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint whose saved paths follow a moved run directory: a
    checkpoint written under another folder is read with its paths re-rooted at this one,
    so the best score and files are kept (Lightning would drop them)."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and old != new:
            state_dict = {k: rerooted(v, old, new) for k, v in state_dict.items()}
        super().load_state_dict(state_dict)

    def start_from(self, path: Path, score: float) -> None:
        """Counts the checkpoint ``path``, saved before training with ``score`` on the
        monitored metric, as the best so far: an epoch replaces it only by beating it."""
        value = torch.tensor(score)
        self.best_k_models = {str(path): value}
        self.kth_best_model_path, self.kth_value = str(path), value
        self.best_model_path, self.best_model_score = str(path), value


def rerooted(value: Any, old: str, new: str) -> Any:
    """``value`` (a path, or a mapping keyed by paths) with prefix ``old`` replaced by ``new``."""
    if isinstance(value, str) and (value == old or value.startswith(old + os.sep)):
        return new + value[len(old):]
    if isinstance(value, dict):
        return {rerooted(k, old, new): v for k, v in value.items()}
    return value


class ProgressLines(L.Callback):
    """Logs ``epoch E step S (k/K of the epoch): loss L, R samples/s`` every ``every`` steps,
    or 10 times an epoch when that is more often: progress for a log file, where no bar is
    drawn. Reading the loss is one host sync per line."""

    def __init__(self, every: int):
        self.every = every
        self._samples, self._start = 0, 0.0

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._samples, self._start = 0, time.perf_counter()  # a run resumed mid-epoch has no epoch start

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._samples, self._start = 0, time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self._samples += batch.size
        per_epoch = trainer.num_training_batches
        if trainer.global_step % progress_every(per_epoch, self.every) or not trainer.is_global_zero:
            return
        rate = self._samples / max(time.perf_counter() - self._start, 1e-9)
        log.info("epoch %d step %d (%d/%s of the epoch): loss %.5f, %.0f samples/s", trainer.current_epoch,
                 trainer.global_step, batch_idx + 1, per_epoch, float(outputs["loss"]), rate)


class EvalProgressLines(L.Callback):
    """Logs ``valid: scoring: N rows scored (R rows/s)`` (``test: ...`` for the split a test
    pass scores) every ``PROGRESS_LOG_SECONDS`` while a split is scored: progress for a log
    file, where no bar is drawn."""

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        split = module.eval_split if trainer.testing else "valid"
        self._rows = RowProgress(f"{split}: scoring", bar=False, verb="scored")

    def on_validation_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._rows.update(batch.size)

    on_test_start = on_validation_start
    on_test_batch_end = on_validation_batch_end


class ValidationSummary(L.Callback):
    """Logs ``epoch E step S: valid auc=… logloss=…`` after each validation, and a warning
    when ``stop_monitor`` (early stopping's metric) is not finite: early stopping then ends
    the run (a gauc is nan when no validation group holds both labels)."""

    def __init__(self, stop_monitor: str | None = None) -> None:
        self.stop_monitor = stop_monitor

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = module.last_metrics.get("valid", {})
        text = " ".join(f"{k}={v:.5f}" for k, v in metrics.items())
        log.info("epoch %d step %d: valid %s", trainer.current_epoch, trainer.global_step, text)
        value = metrics.get(self.stop_monitor.removeprefix("valid/")) if self.stop_monitor else None
        if value is not None:
            warn_if_not_finite(self.stop_monitor, value)


class ValidateAtTheEnd(L.Callback):
    """Has the fit validate at its last step: where ``train.max_steps`` ends it, or the last
    batch of its last epoch (Lightning validates at epoch ends or, with
    ``eval_every_n_steps``, every n-th batch of an epoch only, so the steps after the last of
    those were never validated): the run's log and curves hold the validation of the weights
    it trained, and its best checkpoint is chosen with them, as in the distributed loop.
    Lightning validates a step that sets ``should_stop``, once where it validates anyway."""

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        last_epoch = trainer.current_epoch + 1 >= trainer.max_epochs
        if 0 < trainer.max_steps <= trainer.global_step or last_epoch and trainer.is_last_batch:
            trainer.should_stop = True


class FiniteLoss(L.Callback):
    """Stops training at a non-finite loss, naming the first step that had one.

    The first bad step is recorded on the loss's device (no host sync); the host reads it
    every ``every`` steps (``loss_check_interval``), before each validation and at the end of
    training: the checkpoints a validation writes are never of diverged weights, so the last
    good one stays in the run directory.
    """

    def __init__(self, every: int):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self._first_bad: torch.Tensor | None = None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        loss = outputs["loss"]
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.int64, device=loss.device)
        step = trainer.global_step  # this batch's step, counted from 1
        bad = ~torch.isfinite(loss) & (self._first_bad < 0)
        self._first_bad = torch.where(bad, torch.full_like(self._first_bad, step), self._first_bad)
        if step % self.every == 0:
            self._check(trainer)

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._check(trainer)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._check(trainer)

    def _check(self, trainer: L.Trainer) -> None:
        if self._first_bad is None or int(self._first_bad) < 0:
            return
        raise diverged(int(self._first_bad), trainer.global_step)
