"""The epochs of one rank of a distributed run: training steps, validation, checkpoints,
early stopping, the curve log.

Validation follows a one-process run's rule: after every epoch, or, with
``train.eval_every_n_steps`` N, after every N-th batch of an epoch (counted within the
epoch), and at the run's last step (where ``train.max_steps`` ends it, or the last epoch's
last batch). Each validation checkpoints
``last`` (and ``best`` when the monitored metric improved) with the training position: the
epoch and the batches of it already trained, so a resumed run reads the rest of that epoch
in the same order (``Position`` of the loader).
"""

from __future__ import annotations

import csv
import logging
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ctr.atomic import atomic_path
from ctr.datasets import BatchLoader
from ctr.datasets.progress import RowProgress
from ctr.embeddings.replicas import gather_padded
from ctr.metrics import split_metrics
from ctr.errors import RecipeError
from ctr.recipe import Recipe
from ctr.train.checkpoints import Checkpointer, TrainState
from ctr.train.distributed_stages import ArchSteps
from ctr.train.placement import Placement
from ctr.train.net import densify_gradients
from ctr.train.watch import (LOG_EVERY_N_STEPS, PROGRESS_EVERY_N_STEPS, beats, diverged, loss_check_interval,
                             progress_every, read_log_rows, warn_if_not_finite)

if TYPE_CHECKING:
    from ctr.train.distributed import Parallel

log = logging.getLogger("ctr.train")


@dataclass(frozen=True)
class Span:
    """How long one training runs and where it logs."""

    epochs: int
    max_steps: int | None
    log_csv: Path


@dataclass
class EpochLoop:
    """Trains ``par`` from a ``TrainState`` on (``run``): epochs of steps on this rank's parts
    of the batches (each followed by an ``arch`` step in a bi-level stage), validations,
    checkpoints by ``saver``, early stopping. With ``score_start`` (a stage that goes on
    training weights an earlier stage trained) the weights it starts from are validated first
    and are its best until a validation beats them."""

    recipe: Recipe
    par: Parallel
    loaders: dict[str, BatchLoader]
    saver: Checkpointer
    span: Span
    place: Placement
    arch: ArchSteps | None = None
    score_start: bool = False
    logger: CurveLog = field(init=False)
    losses: GroupFiniteLoss = field(init=False)

    def run(self, state: TrainState) -> TrainState:
        """Trains until ``span`` ends, early stopping stops or ``max_steps`` is reached (validated
        at that step, and at the last epoch's last batch, as one process does: ``ValidateAtTheEnd``)."""
        loader, every = self.loaders["train"], self.recipe.train.eval_every_n_steps
        self.logger = CurveLog(self.span.log_csv, self.place.rank == 0, keep_before=state.step)
        self.losses = GroupFiniteLoss(self.place.device)
        loader.load_state_dict({"epoch": state.epoch, "batches": state.batches})
        if state.step and self.place.rank == 0:
            log.info("resuming from %s, written at step %d", self.saver.last, state.step)
        if self.score_start and state.step == 0 and state.best is None:
            self._start_as_best(state)
        while state.epoch < self.span.epochs and not state.stopped and not self._at_max_steps(state):
            with closing(self._steps(state)) as steps:  # a pass left early stops its loader now
                for index in steps:
                    last, cut = index + 1 == len(loader), self._at_max_steps(state)
                    ends = cut or last and state.epoch + 1 == self.span.epochs  # the run's last step
                    if ends or every and (index + 1) % every == 0 or (last and not every):
                        self._validate(state, last or cut)
                    elif last:
                        self._log_lrs(state)
                    if state.stopped or cut:
                        break
            if self._at_max_steps(state):
                break
            state.epoch, state.batches = state.epoch + 1, 0
        self.losses.check(state.step)
        return state

    def _at_max_steps(self, state: TrainState) -> bool:
        return bool(self.span.max_steps) and state.step >= self.span.max_steps

    def _steps(self, state: TrainState) -> Iterator[int]:
        """Trains the rest of epoch ``state.epoch``, yielding each batch's index in the epoch
        after its step (``state`` counts steps, batches, rows and seconds)."""
        par, loader = self.par, self.loaders["train"]
        loader.follow_epoch(state.epoch)
        par.module.train()
        if not state.batches:
            par.optimizer.before_step(state.epoch, state.step)
            state.epoch_lrs = {f"lr/{name}": lr for name, lr in par.optimizer.lrs().items()}
        begun = (state.samples, state.seconds)  # the epoch's part this pass trains (all of it unless resumed)
        start = time.perf_counter()
        for index, batch in enumerate(loader, start=state.batches):
            rows = loader.batch_rows(index)
            loss_sum = self._step(batch, rows, state)
            state.step, state.batches, state.samples = state.step + 1, index + 1, state.samples + rows
            state.seconds += time.perf_counter() - start
            self.losses.record(loss_sum, state.step)
            self._log_loss(loss_sum, rows, state, index, begun)
            yield index
            start = time.perf_counter()

    def _step(self, batch: Any, rows: int, state: TrainState) -> torch.Tensor:  # noqa: ANN401 (a Batch)
        """One optimizer step on this rank's part of a batch of ``rows`` rows; its BCE sum."""
        par, recipe, world = self.par, self.recipe, self.place.world_size
        par.optimizer.before_step(state.epoch, state.step)
        logits, reg = par.module(batch)
        loss_sum = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="sum")
        loss = loss_sum * (world / rows) + reg
        par.module.module.check_trainable(loss)  # the CTRNet under DMP's or DDP's wrapper
        par.optimizer.zero_grad()
        loss.backward()
        if not par.sharded:
            refuse_unused_parameters(par.module, par.dense)
        average_sparse_gradients(par.sparse, world)
        if par.embedding is not None:
            par.embedding.sync_replicas()
        if recipe.embedding.gradients == "dense":
            densify_gradients(par.sparse)
        if recipe.train.grad_clip:
            nn.utils.clip_grad_norm_(par.dense, recipe.train.grad_clip)
        par.optimizer.step()
        if self.arch is not None:
            self.arch.step()
        return loss_sum

    def _log_loss(self, loss_sum: torch.Tensor, rows: int, state: TrainState, index: int,
                  begun: tuple[int, float]) -> None:
        """The step's mean loss over every rank: a curve row every ``LOG_EVERY_N_STEPS`` steps and
        at the step ``max_steps`` ends training (as one process: Lightning logs a step that sets ``should_stop``), and
        a progress line (with the samples/s of the epoch's pass) as often as one process logs
        them (``progress_every``). Every rank reaches the same steps, so each all-reduce pairs."""
        per_epoch = len(self.loaders["train"])
        curve = state.step % LOG_EVERY_N_STEPS == 0 or self._at_max_steps(state)
        progress = state.step % progress_every(per_epoch, PROGRESS_EVERY_N_STEPS) == 0
        if not (curve or progress):
            return
        total = loss_sum.detach().clone()
        dist.all_reduce(total)
        mean = total.item() / rows
        if curve:
            self.logger.write({"epoch": state.epoch, "step": state.step - 1, "train/loss": mean})
        if progress:
            rate = (state.samples - begun[0]) / max(state.seconds - begun[1], 1e-9)
            log.info("epoch %d step %d (%d/%d of the epoch): loss %.5f, %.0f samples/s", state.epoch, state.step,
                     index + 1, per_epoch, mean, rate)

    def _start_as_best(self, state: TrainState) -> None:
        """Validates the weights before the first step and checkpoints them as ``best``: the
        best so far, and early stopping's reference."""
        monitor, _ = self.recipe.train.best_by
        value = self._monitored(evaluate(self.par.module, self.loaders["valid"], self.place, "valid"), monitor)
        state.best = state.stop_best = value
        self.saver.save(self.saver.best, state)
        log.info("stage start: %s %.5f (the stage's best until a validation beats it)", monitor, value)

    @staticmethod
    def _monitored(valid: dict[str, float], monitor: str) -> float:
        """The value of ``monitor`` (a validation metric the run logs: checked before training)."""
        return valid[monitor.removeprefix("valid/")]

    def _log_lrs(self, state: TrainState) -> None:
        """The lr row of the epoch, logged at its last step (its end, or where training stops)."""
        self.logger.write({"epoch": state.epoch, "step": state.step - 1, **state.epoch_lrs})

    def _validate(self, state: TrainState, ends_epoch: bool) -> None:
        """Validates, steps the plateau schedules, applies early stopping and checkpoints;
        logs the epoch's lr row (before the checkpoints) when ``ends_epoch`` or early stopping
        ends it here, after the validation's row as one process logs them."""
        train = self.recipe.train
        monitor, mode = self.recipe.train.best_by
        self.losses.check(state.step)  # a validation's checkpoints are never of diverged weights
        valid = evaluate(self.par.module, self.loaders["valid"], self.place, "valid")
        self.logger.write({"epoch": state.epoch, "step": state.step - 1, **{f"valid/{k}": v for k, v in valid.items()}})
        self.par.optimizer.after_validation(valid)
        log.info("epoch %d step %d: valid %s (%.0f samples/s)", state.epoch, state.step,
                 " ".join(f"{k}={v:.5f}" for k, v in valid.items()), state.samples / max(state.seconds, 1e-9))
        value = self._monitored(valid, monitor)
        improved = state.best is None or beats(value, state.best, mode)
        state.update_patience(value, mode, train.early_stop)
        if train.early_stop and self.place.rank == 0:
            warn_if_not_finite(monitor, value)
        if ends_epoch or state.stopped:
            self._log_lrs(state)
        if improved:
            state.best = value
            self.saver.save(self.saver.best, state)
        self.saver.save(self.saver.last, state)


class GroupFiniteLoss:
    """``FiniteLoss`` for the ranks of a distributed run: each rank records on its device the
    first step whose loss part was not finite (no host sync); every ``loss_check_interval``
    steps, before each validation and at the end, the ranks take the earliest over all of
    them, and every rank raises the same ``TrainingDiverged``."""

    NONE = 2**62  # no bad step yet

    def __init__(self, device: torch.device):
        self.every = loss_check_interval(device)
        self.first_bad = torch.full((), self.NONE, dtype=torch.int64, device=device)

    def record(self, loss: torch.Tensor, step: int) -> None:
        """Notes ``loss`` (this rank's, of step ``step``); reads it back every ``every`` steps."""
        bad = ~torch.isfinite(loss.detach())
        self.first_bad = torch.where(bad, self.first_bad.clamp(max=step), self.first_bad)
        if step % self.every == 0:
            self.check(step)

    def check(self, step: int) -> None:
        """Raises ``TrainingDiverged`` on every rank when any rank noted a bad step (a collective)."""
        earliest = self.first_bad.clone()
        dist.all_reduce(earliest, op=dist.ReduceOp.MIN)
        if int(earliest) < self.NONE:
            raise diverged(int(earliest), step)


def refuse_unused_parameters(module: nn.Module, dense: list[nn.Parameter]) -> None:
    """Refuses, after a backward, trainable parameters that got no gradient: DDP reduces
    every one each step and would stop the run at the next step with torch's "Expected to
    have finished reduction" naming them by index only."""
    unused = {id(p) for p in dense if p.grad is None}
    if unused:
        names = [name.removeprefix("module.") for name, p in module.named_parameters() if id(p) in unused]
        raise RecipeError(f"trainer.devices: parameters {', '.join(names)} got no gradient in this step; a run over "
                          "several processes needs a gradient for every trainable parameter at every step (set "
                          "requires_grad=False on one the forward does not use)")


def average_sparse_gradients(params: list[nn.Parameter], world: int) -> None:
    """Replaces each table's gradient by the mean of all ranks' gradients: a sparse gradient
    [R, D] (the rows a rank touched; none when it touched none) is gathered from every rank
    (indices and values) and summed row by row, so it stays sparse; a dense one is all-reduced."""
    for param in params:
        grad = param.grad
        if grad is None:  # the method's tables have sparse gradients (EmbeddingMethod.sparse_parameters)
            empty = torch.zeros((1, 0), dtype=torch.int64, device=param.device)
            grad = torch.sparse_coo_tensor(empty, param.new_zeros((0, *param.shape[1:])), param.shape,
                                           check_invariants=False)
        if not grad.is_sparse:
            dist.all_reduce(grad)
            grad.div_(world)
            continue
        grad = grad.coalesce()
        rows = gather_padded(grad.indices()[0], world)
        values = gather_padded(grad.values(), world)
        summed = torch.sparse_coo_tensor(rows.unsqueeze(0), values / world, grad.shape, check_invariants=False)
        param.grad = summed.coalesce()


@torch.no_grad()
def evaluate(module: nn.Module, loader: BatchLoader, place: Placement, split: str) -> dict[str, float]:
    """AUC and logloss (and group AUC when the data has groups) over every row of ``loader``'s
    split (named ``split``): each rank scores its parts, the logits (float64) and labels are
    gathered from all. Rank 0 logs the rows scored (of every rank) every ``PROGRESS_LOG_SECONDS``,
    as one process does without a bar."""
    module.eval()
    logits, labels, groups = [], [], []
    scored = RowProgress(f"{split}: scoring", bar=False, verb="scored") if place.rank == 0 else None
    for index, batch in enumerate(loader):
        logits.append(module(batch)[0].double())
        if scored is not None:
            scored.update(loader.batch_rows(index))
        labels.append(batch.labels.float())
        if batch.groups is not None:
            groups.append(batch.groups)
    module.train()
    scores, truth = (_gather(torch.cat(part), place).numpy() for part in (logits, labels))
    return split_metrics(truth, scores, _gather(torch.cat(groups), place).numpy() if groups else None)


def _gather(values: torch.Tensor, place: Placement) -> torch.Tensor:
    """Every rank's ``values`` [n_r], concatenated in rank order on the host [Σ n_r]."""
    return gather_padded(values, place.world_size).cpu()


class CurveLog:
    """``logs/metrics.csv`` as the one-process run writes it (rank 0 only): one row per logged
    step (``train/loss``), per epoch (its lrs) and per validation, as Lightning's CSV logger
    writes them: the header holds the columns logged so far, sorted (the file is rewritten
    when a row brings a new one), and metric values are float32 (Lightning logs tensors of
    its default dtype). A resumed run keeps the rows written before its checkpoint (those of
    steps before ``keep_before``; ``read_log_rows``) under their header, as ``keep_log_rows``
    does in one process."""

    COLUMNS = ("epoch", "lr/dense", "lr/embedding", "step", "train/loss", "valid/auc", "valid/gauc", "valid/logloss")

    def __init__(self, path: Path, writer: bool, keep_before: int):
        self.path, self.writer, self.keys = path, writer, []
        if not writer:
            return
        header, kept = read_log_rows(path, keep_before, self.COLUMNS) if keep_before and path.is_file() else ([], [])
        path.parent.mkdir(parents=True, exist_ok=True)
        self.keys = header
        if header:
            self._rewrite(kept)
        else:
            path.unlink(missing_ok=True)

    def write(self, row: dict[str, Any]) -> None:
        """Appends ``row`` (``epoch`` and ``step`` integers, the rest metric values)."""
        if not self.writer:
            return
        row = {key: value if key in ("epoch", "step") else float(np.float32(value)) for key, value in row.items()}
        if set(row) - set(self.keys):
            self.keys = sorted({*self.keys, *row})
            self._rewrite([*self._rows(), row])
            return
        with self.path.open("a", newline="") as file:
            csv.DictWriter(file, fieldnames=self.keys).writerow(row)

    def _rows(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as file:
            return list(csv.DictReader(file))

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as file:
            out = csv.DictWriter(file, fieldnames=self.keys)
            out.writeheader()
            out.writerows(rows)


def rows_of(metrics_csv: Path, column: str) -> list[tuple[int, float]]:
    """(step, value) of every row of a run's ``logs/metrics.csv`` with ``column`` set."""
    with metrics_csv.open(newline="") as file:
        return [(int(row["step"]), float(row[column])) for row in csv.DictReader(file) if row.get(column)]
