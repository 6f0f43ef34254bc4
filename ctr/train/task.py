"""The Lightning module that trains any registered model over any embedding method."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctr.batch import Batch
from ctr.embeddings.stages import MultiStageMixin, Stage
from ctr.metrics import split_metrics
from ctr.recipe import EmbeddingOptimizerConfig, Recipe
from ctr.registry import EMBEDDINGS
from ctr.schema import Schema
from ctr.train.net import CTRNet, densify_gradients
from ctr.train.optim import CombinedOptimizer, FusedLR, build_optimizer
from ctr.train.phases import PhaseClock
from ctr.train.schedule import Schedules

log = logging.getLogger(__name__)


def unfinished_epoch(checkpoint: dict[str, Any]) -> int | None:
    """The epoch a Lightning checkpoint was written in before that epoch's end (a validation's
    checkpoint, or the epoch end's, written before the epoch's log row); None for one written
    between epochs or without the loops' state."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    started, completed = progress.get("started", 0), progress.get("completed", 0)
    return completed if started > completed else None


class CTRTask(L.LightningModule):
    """BCE training with a dense optimizer and a sparse embedding optimizer stepped together.

    Logs ``train/loss`` per step and ``valid/auc``, ``valid/logloss`` (and ``valid/gauc``
    when the data has groups) per validation; ``trainer.test`` evaluates the split named by
    ``eval_split`` and logs it under that name.

    During a stage of a multi-stage method (``stage``), the method's architecture parameters
    get their own optimizer (``embedding.arch_optimizer``): stepped with the training loss,
    or, in a ``bilevel`` stage, on a batch from ``valid_batches`` after every training step.

    The dense and embedding optimizers follow their learning-rate schedules (``schedules``),
    whose lr is logged per epoch as ``lr/dense`` and ``lr/embedding`` (the lrs at the epoch's
    start, logged at its end) and whose state is saved in checkpoints (key ``lr_schedules``;
    the epoch's lrs under ``epoch_lrs``). A run resumed from a checkpoint written before its
    epoch's end logs that epoch's lrs where the uninterrupted run did (``open_epoch``). A fused
    embedding update takes its lr from the optimizer part ``embedding`` (``FusedLR``),
    scheduled and saved like the others.
    """

    def __init__(self, recipe: Recipe, schema: Schema, phases: PhaseClock | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.phases = phases or PhaseClock()
        self.recipe = recipe
        self.net = CTRNet(recipe, schema)
        self._outputs: list[tuple[Tensor, Tensor, Tensor | None]] = []
        self.last_metrics: dict[str, dict[str, float]] = {}
        self.eval_split = "test"
        self.stage: Stage | None = None
        self.valid_batches: Iterator[Batch] | None = None
        self.schedules: Schedules | None = None
        self._schedule_state: dict[str, Any] | None = None
        self._epoch_lrs: dict[str, float] = {}
        self.open_epoch: int | None = None  # the epoch begun whose lrs are not logged yet (a resume sets it)

    @contextmanager
    def in_stage(self, stage: Stage, valid_batches: Iterator[Batch] | None) -> Iterator[None]:
        """Trains as stage ``stage`` of a multi-stage method inside the block (its optimizers,
        and for a bi-level stage the validation batches of its architecture steps)."""
        self.stage, self.valid_batches = stage, valid_batches
        try:
            yield
        finally:
            self.stage, self.valid_batches = None, None

    def forward(self, batch: Batch) -> Tensor:
        return self.net(batch)[0]

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        """Asynchronous copies (a batch from pinned memory does not block the host); a batch
        the loader already put on ``device`` is used as it is."""
        return batch.to(device, non_blocking=True)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        optimizers = self.optimizers()
        optimizer = optimizers[0] if isinstance(optimizers, list) else optimizers
        self.schedules.before_step(self.current_epoch, self.global_step)
        loss = self.step(batch, optimizer, self.manual_backward)
        if self._bilevel():
            self._arch_step(optimizers[1].optimizer)
        # a progress-bar metric is read back to the host every step: only when a bar shows it
        self.log("train/loss", loss.detach(), batch_size=batch.size, prog_bar=self.trainer.progress_bar_callback is not None)
        return loss

    def step(self, batch: Batch, optimizer: torch.optim.Optimizer,
             backward: Callable[[Tensor], None] = Tensor.backward) -> Tensor:
        """One training step on ``batch``: BCE plus the regularizers, ``backward``, gradient
        clipping, ``optimizer``; returns the BCE loss. Lightning passes its ``manual_backward``;
        outside a Trainer (tests, a plain loop) the tensor's own backward runs."""
        with self.phases("embedding"):
            embedded = self.net.embedding(batch.sparse)
        with self.phases("dense"):
            logits, reg = self.net.score(batch, embedded)
            loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
        total = loss + reg
        self.net.check_trainable(total)
        optimizer.zero_grad()
        with self.phases("backward"):
            backward(total)
        with self.phases("optimizer"):
            if self.recipe.embedding.gradients == "dense":
                densify_gradients(self.net.embedding.sparse_parameters())
            if self.recipe.train.grad_clip:
                nn.utils.clip_grad_norm_(self._dense_parameters(), self.recipe.train.grad_clip)
            optimizer.step()
        return loss

    def _bilevel(self) -> bool:
        return self.stage is not None and self.stage.bilevel

    def _arch_step(self, optimizer: torch.optim.Optimizer) -> None:
        """One architecture step on the next validation batch (first-order bi-level); the
        raw optimizer is stepped, so ``global_step`` counts training steps only."""
        if self.valid_batches is None:
            raise RuntimeError(f"stage {self.stage.name!r} is bilevel but the task has no validation batches")
        batch = next(self.valid_batches).to(self.device)
        self.net.eval()  # the validation loss as evaluation sees it: no dropout noise in its gradient
        try:
            logits, _ = self.net(batch)
            self.net.embedding.arch_update(F.binary_cross_entropy_with_logits(logits, batch.labels), optimizer)
        finally:
            self.net.train()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._collect(batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._collect(batch)

    def on_validation_epoch_end(self) -> None:
        self._finish("valid")
        if self.schedules is not None:
            self.schedules.after_validation(self.last_metrics["valid"])

    def on_train_start(self) -> None:
        """Restores the schedules' state of a resumed checkpoint (after Lightning restored the
        optimizers, whose param groups hold a plateau schedule's lr)."""
        if self._schedule_state is not None:
            self.schedules.load_state_dict(self._schedule_state)
            self._schedule_state = None

    def on_train_epoch_start(self) -> None:
        self.write_open_epoch()  # resumed after the last step of an epoch whose end it skipped
        self.schedules.before_step(self.current_epoch, self.global_step)
        self._epoch_lrs = self.schedules.lrs()
        self.open_epoch = self.current_epoch

    def on_train_epoch_end(self) -> None:
        """Logs the lr each optimizer had at the start of this epoch (also in a run resumed
        inside it, from the checkpoint's lrs, unless the kept log holds them)."""
        if self.open_epoch is None:
            return
        for name, lr in self._epoch_lrs.items():  # one value an epoch (batch_size: Lightning infers none then)
            self.log(f"lr/{name}", lr, on_step=False, on_epoch=True, batch_size=1)
        self.open_epoch = None

    def write_open_epoch(self) -> None:
        """Writes the lr row of ``open_epoch``, if any: an epoch whose end this resumed fit did
        not run (its checkpoint was written after the epoch's last step, or early stopping or
        ``max_steps`` ended training there). To the loggers as Lightning's epoch end would:
        float32 values at the epoch's last step."""
        if self.open_epoch is None:
            return
        row = {f"lr/{name}": torch.tensor(lr, dtype=torch.float32).item() for name, lr in self._epoch_lrs.items()}
        for logger in self.loggers:
            logger.log_metrics({**row, "epoch": self.open_epoch}, step=self.global_step - 1)
            logger.save()
        self.open_epoch = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.schedules is not None:
            checkpoint["lr_schedules"] = self.schedules.state_dict()
        checkpoint["epoch_lrs"] = self._epoch_lrs

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._schedule_state = checkpoint.get("lr_schedules")
        self._epoch_lrs = checkpoint.get("epoch_lrs", {})

    def on_test_epoch_end(self) -> None:
        self._finish(self.eval_split)

    def _collect(self, batch: Batch) -> None:
        logits = self(batch).detach().double()  # a mixed-precision run's bf16 has no numpy type
        self._outputs.append((logits, batch.labels, batch.groups))

    def _finish(self, split: str) -> None:
        logits, labels, groups = self._gathered()
        self._outputs = []
        metrics = split_metrics(labels, logits, groups)
        self.last_metrics[split] = metrics
        for name, value in metrics.items():
            self.log(f"{split}/{name}", value, sync_dist=False, rank_zero_only=False)

    def _gathered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The epoch's logits (float64), labels and groups (None without a group column): the
        Trainer runs one process (a distributed run evaluates in ``distributed_epochs``)."""
        logits = torch.cat([z for z, _, _ in self._outputs])
        labels = torch.cat([y for _, y, _ in self._outputs])
        has_groups = self._outputs[0][2] is not None
        groups = torch.cat([g for _, _, g in self._outputs]) if has_groups else None
        to_np = lambda t: t.cpu().numpy()  # noqa: E731
        return to_np(logits), to_np(labels), None if groups is None else to_np(groups)

    def _arch_parameters(self) -> list[nn.Parameter]:
        embedding = self.net.embedding
        if not isinstance(embedding, MultiStageMixin):
            return []
        return [p for p in embedding.arch_parameters() if p.requires_grad]

    def _dense_parameters(self) -> list[nn.Parameter]:
        other = {id(p) for p in self.net.embedding.sparse_parameters() + self._arch_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in other]

    def _say_embedding_optimizer_unused(self) -> None:
        """Warns that the recipe's ``train.embedding_optimizer`` (or ``embedding_scheduler``)
        steps nothing: the method has no embedding rows for it (DHE's MLP, the quantized tables)."""
        method = self.recipe.embedding.method
        if getattr(EMBEDDINGS.get(method).target, "updates_in_backward", False):
            how = "it updates its rows itself in the backward, with embedding.optimizer"
        else:
            how = "its parameters are dense: train.optimizer trains them"
        log.warning("train.embedding_optimizer: %s has no embedding rows for it to step (%s), so its settings are "
                    "unused", method, how)

    def _fit_epochs(self) -> int | None:
        """The epochs of the fit this task trains in (a multi-stage method's stage has its own);
        None outside a Trainer (a plain loop steps ``train.epochs``)."""
        return None if self._trainer is None else self._trainer.max_epochs

    def configure_optimizers(self) -> CombinedOptimizer | list[torch.optim.Optimizer]:
        train = self.recipe.train
        parts = {"dense": build_optimizer(train.optimizer, self._dense_parameters(), "train.optimizer")}
        sparse = [p for p in self.net.embedding.sparse_parameters() if p.requires_grad]
        if sparse:
            parts["embedding"] = build_optimizer(train.embedding_optimizer, sparse, "train.embedding_optimizer")
        elif train.embedding_optimizer.fused:
            parts["embedding"] = fused_lr = FusedLR(train.embedding_optimizer.lr)
            self.net.embedding.follow_fused_lr(fused_lr.lr)
        elif train.embedding_optimizer != EmbeddingOptimizerConfig() or train.embedding_scheduler is not None:
            self._say_embedding_optimizer_unused()
        self.schedules = Schedules(parts, train, self._fit_epochs())
        arch = self._arch_parameters()
        if not arch:
            return CombinedOptimizer(parts)
        arch_optimizer = build_optimizer(self.net.embedding.config.arch_optimizer, arch, "embedding.arch_optimizer")
        if self._bilevel():
            return [CombinedOptimizer(parts), arch_optimizer]
        return CombinedOptimizer({**parts, "arch": arch_optimizer})
