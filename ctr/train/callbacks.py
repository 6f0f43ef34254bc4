"""Callbacks: training throughput, and a one-line summary per validation."""

from __future__ import annotations

import logging
import time

import lightning as L

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
