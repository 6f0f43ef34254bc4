"""One process of a distributed run (``trainer.devices`` × ``trainer.num_nodes`` > 1).

Every process runs ``train``: it joins the process group (gloo on CPU, nccl on CUDA),
builds the recipe's network exactly as a one-process run does (same seed, same rows), puts
it under DMP or DDP (``ctr.train.sharded``) and trains on its part of every batch of the
one-process order (``BatchLoader(split_batches=True)``). Each rank's loss is its rows' BCE
sum × world size / the batch's rows, so the gradients DDP averages (and the tables'
gradients, which TorchRec divides by the world size) are those of the whole batch's mean:
N processes step like one process on the same global batch. The logged ``train/loss`` is
the batch's mean over all ranks; validation and test metrics are computed on the
predictions and labels gathered from every rank (exact AUC over all rows).

This is ctr's own loop, not Lightning's (``docs/distributed.md`` says why): after each
epoch it validates, saves ``checkpoints/last`` (and ``checkpoints/best`` when the monitored
metric improved) as torch.distributed.checkpoint folders, and applies early stopping; at
the end the best checkpoint is evaluated on valid and test.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ctr.datasets import BatchLoader, Prepared, prepare
from ctr.embeddings.base import EmbeddingMethod
from ctr.embeddings.replicas import gather_padded
from ctr.embeddings.stages import Stage
from ctr.datasets.source import resolve_features
from ctr.errors import RecipeError, UserError
from ctr.metrics import auc, group_auc, logloss
from ctr.recipe import Recipe
from ctr.registry import EMBEDDINGS
from ctr.train.checkpoints import Checkpointer, TrainState, is_distributed_checkpoint
from ctr.train.distributed_optim import Optimizers
from ctr.train.distributed_stages import ArchSteps, cycle, run_stages
from ctr.train.stages import StageFiles
from ctr.train.loop import LOG_EVERY_N_STEPS, PROGRESS_EVERY_N_STEPS, Placement, use_threads
from ctr.train.optim import build_optimizer
from ctr.train.plots import plot_curves
from ctr.train.rundir import RunDir
from ctr.train.sharded import check_request, shard, shardable
from ctr.train.task import CTRNet, densify_gradients

log = logging.getLogger("ctr.train")


def check_distributed(recipe: Recipe) -> None:
    """Refuses, before any work, what a distributed run does not do (one line naming the key)."""
    train, trainer = recipe.train, recipe.trainer
    check_request(recipe)
    method = EMBEDDINGS.get(recipe.embedding.method, "embedding.method").target
    refused = {
        "trainer.compile": trainer.compile, "data.on_device": recipe.data.on_device,
        "train.eval_every_n_steps": train.eval_every_n_steps is not None,
    }
    for key, on in refused.items():
        if on:
            raise RecipeError(f"{key}: not available in a distributed run (trainer.devices × num_nodes > 1)")
    if train.batch_size % trainer.world_size or train.eval_batch_size % trainer.world_size:
        raise RecipeError(f"train.batch_size: {train.batch_size} and eval_batch_size {train.eval_batch_size} must be"
                          f" multiples of the {trainer.world_size} processes")


@dataclass
class Parallel:
    """The network of this rank: the module to call, its optimizers (dense parameters, and
    the tables an optimizer steps outside the backward), its dense parameters (for gradient
    clipping), whether TorchRec sharded its tables and how; under DDP, the embedding method
    whose replicas ctr syncs."""

    module: nn.Module
    optimizer: Optimizers
    dense: list[nn.Parameter]
    sharded: bool
    plan: dict[str, str] = field(default_factory=dict)
    sparse: list[nn.Parameter] = field(default_factory=list)  # replicated tables outside DDP (averaged by ctr)
    embedding: EmbeddingMethod | None = None


def parallel(net: CTRNet, recipe: Recipe, device: torch.device, stage: Stage | None = None) -> Parallel:
    """``net`` under DMP (plain tables) or DDP (every other method), with its optimizers. In a
    stage of a multi-stage method the architecture parameters have their own optimizer
    (``embedding.arch_optimizer``): stepped with the others on the training loss, or, in a
    bi-level stage, kept out of DDP and stepped by the architecture steps only."""
    if shardable(recipe, net):
        sharded = shard(net, recipe, device)
        optimizer = Optimizers.build(recipe, sharded.dense, sharded.replicated_tables)
        return Parallel(sharded.module, optimizer, sharded.dense, True, sharded.plan)
    net.to(device)
    tables = [p for p in net.embedding.sparse_parameters() if p.requires_grad]
    arch = [p for p in net.embedding.arch_parameters() if p.requires_grad] if stage is not None else []
    others = {id(p) for p in tables + arch}
    apart = {id(p) for p in tables + (arch if stage is not None and stage.bilevel else [])}
    ignored = [name for name, p in net.named_parameters() if id(p) in apart]  # DDP buckets dense gradients only
    ignored += [f"embedding.{name}" for name in net.embedding.synced_buffers]  # synced by sync_replicas, not broadcast
    net.embedding.replicated = True
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(net, ignored)
    module = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                                 find_unused_parameters=False)
    dense = [p for p in net.parameters() if p.requires_grad and id(p) not in others]
    optimizer = Optimizers.build(recipe, dense, tables)
    if arch:
        config = net.embedding.config.arch_optimizer
        optimizer = optimizer.with_arch(build_optimizer(config, arch, "embedding.arch_optimizer"), stage.bilevel)
    return Parallel(module, optimizer, dense, False, sparse=tables, embedding=net.embedding)


def average_sparse_gradients(params: list[nn.Parameter], world: int) -> None:
    """Replaces each table's gradient by the mean of all ranks' gradients: a sparse gradient
    [R, D] (the rows a rank touched; none when it touched none) is gathered from every rank
    (indices and values) and summed row by row, so it stays sparse; a dense one is all-reduced."""
    for param in params:
        grad = param.grad
        if grad is None:  # the method's tables have sparse gradients (EmbeddingMethod.sparse_parameters)
            empty = torch.zeros((1, 0), dtype=torch.int64, device=param.device)
            grad = torch.sparse_coo_tensor(empty, param.new_zeros((0, *param.shape[1:])), param.shape)
        if not grad.is_sparse:
            dist.all_reduce(grad)
            grad.div_(world)
            continue
        grad = grad.coalesce()
        rows = gather_padded(grad.indices()[0], world)
        values = gather_padded(grad.values(), world)
        summed = torch.sparse_coo_tensor(rows.unsqueeze(0), values / world, grad.shape).coalesce()
        param.grad = summed


def train(recipe: Recipe, run: RunDir, resume: bool, place: Placement) -> dict[str, Any]:
    """Trains this rank's part of ``recipe`` into ``run``; returns (rank 0 writes) metrics.json."""
    check_distributed(recipe)
    use_threads(recipe.trainer.num_threads)
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    recipe.data = resolve_features(recipe.data)
    if place.rank == 0:
        prepared = prepare(recipe.data, False)  # the cache is filled once, then read by every rank
    dist.barrier()
    if place.rank != 0:
        prepared = prepare(recipe.data, False)
    else:
        run.write_recipe(recipe)
        run.copy_schema(prepared.root)
    net = CTRNet(recipe, prepared.schema)
    fitting = Fitting(recipe, net, prepared, run, place, resume)
    try:
        stage_seconds = {}
        if net.embedding.stages():
            stage_seconds = run_stages(net, run, place.rank, resume, fitting.stage, fitting.score, recipe.seed)
        else:
            fitting.whole()
        done = fitting.done
        metrics: dict[str, Any] = {split: evaluate(done.par.module, fitting.loaders[split], place)
                                   for split in ("valid", "test")}
    finally:
        fitting.close()
    seconds = sum(stage_seconds.values()) if stage_seconds else done.state.seconds
    metrics.update(embedding_bytes=net.embedding.memory_bytes(), full_embedding_bytes=net.embedding.full_bytes(),
                   train_samples_per_s=done.state.samples / done.state.seconds if done.state.seconds else 0.0,
                   train_seconds=seconds, epochs=done.state.epoch, steps=done.state.step,
                   best_checkpoint=str(done.saver.best.relative_to(run.root)), world_size=place.world_size,
                   sharding=done.par.plan or "data_parallel (replicated, DDP)")
    if stage_seconds:
        metrics["stage_seconds"] = stage_seconds
    if place.rank == 0:
        run.write_metrics(metrics)
        plot_curves(run.log_csv, run.curves)
    return metrics


@dataclass
class Done:
    """A finished training on this rank: its state, network and checkpoints (its best loaded)."""

    state: TrainState
    par: Parallel
    saver: Checkpointer


@dataclass(frozen=True)
class Span:
    """How long one training runs and where it logs."""

    epochs: int
    max_steps: int | None
    log_csv: Path


class Fitting:
    """Trains ``net`` on this rank: the whole run (``whole``), or one ``train`` stage of a
    multi-stage method (``stage``, with its own checkpoints and log; the last stage's are the
    run's). ``done`` is the last training finished."""

    def __init__(self, recipe: Recipe, net: CTRNet, prepared: Prepared, run: RunDir, place: Placement, resume: bool):
        self.recipe, self.net, self.prepared, self.run, self.place, self.resume = recipe, net, prepared, run, place, resume
        self.loaders = {split: self._loader(split, split == "train") for split in ("train", "valid", "test")}
        self.done: Done | None = None

    def whole(self) -> float:
        train = self.recipe.train
        return self._fit(self.run.checkpoints, Span(train.epochs, train.max_steps, self.run.log_csv), None)

    def stage(self, stage: Stage, index: int, last: bool) -> float:
        """Trains ``stage`` (the ``index``-th; ``last``: the method's last stage); its seconds."""
        train, settings = self.recipe.train, self.net.embedding.stage_settings(stage.name)
        folder = StageFiles(self.run).folder(index, stage)
        log_csv = self.run.log_csv if last else folder / "logs" / "metrics.csv"
        span = Span(settings.epochs or train.epochs, settings.max_steps or train.max_steps, log_csv)
        return self._fit(self.run.checkpoints if last else folder / "checkpoints", span, stage)

    def score(self) -> float:
        """Validation AUC of the network now, over every rank's rows (a procedure's score)."""
        return evaluate(self.net, self.loaders["valid"], self.place)["auc"]

    def close(self) -> None:
        for loader in self.loaders.values():
            loader.close()

    def _fit(self, folder: Path, span: Span, stage: Stage | None) -> float:
        par = parallel(self.net, self.recipe, self.place.device, stage)
        par.optimizer.follow_schedules(self.recipe.train, par.module.fused_optimizer if par.sharded else None)
        if self.place.rank == 0:
            log.info("%d processes: %s", self.place.world_size, _describe(par))
        saver = Checkpointer(folder, par.module, par.optimizer, par.sharded, self.place)
        state = saver.restore() if self.resume and is_distributed_checkpoint(saver.last) else TrainState()
        valid = self._loader("valid", True, seed_offset=1) if stage is not None and stage.bilevel else None
        try:
            arch = None if valid is None else ArchSteps(self.net, cycle(valid, state.step), par.optimizer.arch,
                                                        self.place.world_size)
            trained = _epochs(self.recipe, par, self.loaders, saver, state, span, self.place, arch)
        finally:
            if valid is not None:
                valid.close()
        saver.load(saver.best)
        self.done = Done(trained, par, saver)
        return trained.seconds

    def _loader(self, split: str, training: bool, seed_offset: int = 0) -> BatchLoader:
        recipe, place = self.recipe, self.place
        size = recipe.train.batch_size if training else recipe.train.eval_batch_size
        return BatchLoader(self.prepared.split_dir(split), self.prepared.schema, size, shuffle=training,
                           seed=recipe.seed + seed_offset, rank=place.rank, world_size=place.world_size,
                           split_batches=True, prefetch=recipe.data.prefetch,
                           shuffle_buffer=recipe.data.shuffle_buffer, device=place.device)


def _describe(par: Parallel) -> str:
    if not par.sharded:
        return "tables replicated under DDP (data-parallel)"
    return "tables sharded by TorchRec: " + "; ".join(f"{t} {where}" for t, where in par.plan.items())


def _epochs(recipe: Recipe, par: Parallel, loaders: dict[str, BatchLoader], saver: Checkpointer, state: TrainState,
            span: Span, place: Placement, arch: ArchSteps | None) -> TrainState:
    """Epochs from ``state`` on: train (and, in a bi-level stage, ``arch`` steps), validate,
    checkpoint, early-stop."""
    train, logger = recipe.train, CurveLog(span.log_csv, place.rank == 0, keep_epochs=state.epoch)
    monitor = train.early_stop.monitor if train.early_stop else "valid/auc"
    mode = train.early_stop.mode if train.early_stop else "max"
    while state.epoch < span.epochs and not state.stopped:
        start = time.perf_counter()
        par.optimizer.before_step(state.epoch, state.step)
        lrs = {f"lr/{name}": lr for name, lr in par.optimizer.lrs().items()}
        samples = _train_epoch(recipe, par, loaders["train"], state, logger, span.max_steps, arch)
        state.seconds += time.perf_counter() - start
        state.samples += samples
        valid = evaluate(par.module, loaders["valid"], place)
        logger.write({"epoch": state.epoch, "step": state.step - 1, **lrs})
        logger.write({"epoch": state.epoch, "step": state.step - 1, **{f"valid/{k}": v for k, v in valid.items()}})
        par.optimizer.after_validation(valid)
        log.info("epoch %d step %d: valid %s (%.0f samples/s)", state.epoch, state.step,
                 " ".join(f"{k}={v:.5f}" for k, v in valid.items()), state.samples / max(state.seconds, 1e-9))
        state.epoch += 1
        value = valid.get(monitor.removeprefix("valid/")) if monitor.startswith("valid/") else None
        if value is None:
            raise RecipeError(f"train.early_stop.monitor: {monitor!r} is not a validation metric")
        improved = state.best is None or (value > state.best if mode == "max" else value < state.best)
        state.update_patience(value, mode, train.early_stop)
        if improved:
            state.best = value
            saver.save(saver.best, state)
        saver.save(saver.last, state)
        if span.max_steps and state.step >= span.max_steps:
            break
    return state


def _train_epoch(recipe: Recipe, par: Parallel, loader: BatchLoader, state: TrainState, log_rows: CurveLog,
                 max_steps: int | None, arch: ArchSteps | None) -> int:
    """One epoch of this rank's parts of the batches (each step followed by an ``arch`` step
    when given); returns the rows trained over all ranks."""
    train, world = recipe.train, loader.world_size
    loader.epoch = state.epoch
    par.module.train()
    rows = 0
    for index, batch in enumerate(loader):
        if max_steps and state.step >= max_steps:
            break
        par.optimizer.before_step(state.epoch, state.step)
        logits, reg = par.module(batch)
        loss_sum = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="sum")
        batch_rows = loader.batch_rows(index)
        par.optimizer.zero_grad()
        (loss_sum * (world / batch_rows) + reg).backward()
        average_sparse_gradients(par.sparse, world)
        if par.embedding is not None:
            par.embedding.sync_replicas()
        if recipe.embedding.gradients == "dense":
            densify_gradients(par.sparse)
        if train.grad_clip:
            nn.utils.clip_grad_norm_(par.dense, train.grad_clip)
        par.optimizer.step()
        if arch is not None:
            arch.step()
        state.step += 1
        rows += batch_rows
        if state.step % LOG_EVERY_N_STEPS == 0:
            total = loss_sum.detach().clone()
            dist.all_reduce(total)
            _check_finite(total, state.step)
            mean = total.item() / batch_rows
            log_rows.write({"epoch": state.epoch, "step": state.step - 1, "train/loss": mean})
            if state.step % PROGRESS_EVERY_N_STEPS == 0:
                log.info("epoch %d step %d (%d/%d of the epoch): loss %.5f", state.epoch, state.step, index + 1,
                         len(loader), mean)
    return rows


def _check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise UserError(f"training diverged: the loss is {loss.item()} at step {step} (lower the learning rates)")


@torch.no_grad()
def evaluate(module: nn.Module, loader: BatchLoader, place: Placement) -> dict[str, float]:
    """AUC and logloss (and group AUC when the data has groups) over every row of ``loader``'s
    split: each rank scores its parts, the predictions and labels are gathered from all."""
    module.eval()
    probs, labels, groups = [], [], []
    for batch in loader:
        probs.append(torch.sigmoid(module(batch)[0].float()))
        labels.append(batch.labels.float())
        if batch.groups is not None:
            groups.append(batch.groups)
    module.train()
    gathered = [_gather(torch.cat(part), place) for part in (probs, labels)]
    scores, truth = gathered[0].numpy(), gathered[1].numpy()
    metrics = {"auc": auc(truth, scores), "logloss": logloss(truth, scores)}
    if groups:
        metrics["gauc"] = group_auc(_gather(torch.cat(groups), place).numpy(), truth, scores)
    return metrics


def _gather(values: torch.Tensor, place: Placement) -> torch.Tensor:
    """Every rank's ``values`` [n_r], concatenated in rank order on the host [Σ n_r]."""
    return gather_padded(values, place.world_size).cpu()


class CurveLog:
    """``logs/metrics.csv`` as the one-process run writes it (rank 0 only): one row per logged
    step (``train/loss``) and per validation; a resumed run keeps the rows of finished epochs."""

    COLUMNS = ("epoch", "step", "lr/dense", "lr/embedding", "train/loss", "valid/auc", "valid/logloss", "valid/gauc")

    def __init__(self, path: Path, writer: bool, keep_epochs: int):
        self.path, self.writer = path, writer
        if not writer:
            return
        kept = []
        if keep_epochs and path.is_file():
            with path.open(newline="") as file:
                kept = [row for row in csv.DictReader(file) if int(row["epoch"]) < keep_epochs]
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as file:
            out = csv.DictWriter(file, fieldnames=self.COLUMNS)
            out.writeheader()
            out.writerows(kept)

    def write(self, row: dict[str, Any]) -> None:
        if self.writer:
            with self.path.open("a", newline="") as file:
                csv.DictWriter(file, fieldnames=self.COLUMNS).writerow(row)


def rows_of(metrics_csv: Path, column: str) -> list[tuple[int, float]]:
    """(step, value) of every row of a run's ``logs/metrics.csv`` with ``column`` set."""
    with metrics_csv.open(newline="") as file:
        return [(int(row["step"]), float(row[column])) for row in csv.DictReader(file) if row.get(column)]

