"""Callbacks: training throughput, and a one-line summary per validation."""

from __future__ import annotations

import logging
import time

import lightning as L
import torch

from ctr.errors import TrainingDiverged

log = logging.getLogger("ctr.train")


class Throughput(L.Callback):
    """Measures training samples per second, excluding validation time."""

    def __init__(self) -> None:
        self.samples = 0
        self.seconds = 0.0
        self._epoch_start = 0.0
        self._paused = 0.0
        self._validation_start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._epoch_start, self._paused = time.perf_counter(), 0.0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.samples += batch.size

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._paused += time.perf_counter() - self._validation_start

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.seconds += time.perf_counter() - self._epoch_start - self._paused

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


class ValidationSummary(L.Callback):
    """Logs ``epoch E step S: valid auc=… logloss=…`` after each validation."""

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = module.last_metrics.get("valid", {})
        text = " ".join(f"{k}={v:.5f}" for k, v in metrics.items())
        log.info("epoch %d step %d: valid %s", trainer.current_epoch, trainer.global_step, text)


class FiniteLoss(L.Callback):
    """Stops training at a non-finite loss, naming the first step that had one.

    The first bad step is recorded on the loss's device (no host sync); the host reads it
    every ``every`` steps on a GPU (every step on the CPU, where reading is free), before each
    validation and at the end of training: the checkpoints a validation writes are never of
    diverged weights, so the last good one stays in the run directory.
    """

    def __init__(self, every: int):
        self.every = every
        self._first_bad: torch.Tensor | None = None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        loss = outputs["loss"]
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.int64, device=loss.device)
        step = trainer.global_step  # this batch's step, counted from 1
        bad = ~torch.isfinite(loss) & (self._first_bad < 0)
        self._first_bad = torch.where(bad, torch.full_like(self._first_bad, step), self._first_bad)
        if loss.device.type == "cpu" or step % self.every == 0:
            self._check(trainer)

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._check(trainer)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._check(trainer)

    def _check(self, trainer: L.Trainer) -> None:
        if self._first_bad is None or int(self._first_bad) < 0:
            return
        raise TrainingDiverged(
            f"training: the loss is not finite at step {int(self._first_bad)}; stopped at step {trainer.global_step},"
            " the last good checkpoint is kept (try a lower learning rate or train.grad_clip)"
        )
