"""One process of a distributed run (``trainer.devices`` × ``trainer.num_nodes`` > 1).

Every process runs ``train_in_group``: it joins the process group (gloo on CPU, nccl on
CUDA) and runs ``train``, which builds the recipe's network exactly as a one-process run does (same seed, same rows), puts
it under DMP or DDP (``ctr.train.sharded``) and trains on its part of every batch of the
one-process order (``BatchLoader(split_batches=True)``). Each rank's loss is its rows' BCE
sum × world size / the batch's rows, so the gradients DDP averages (and the tables'
gradients, which TorchRec divides by the world size) are those of the whole batch's mean:
N processes step like one process on the same global batch. The logged ``train/loss`` is
the batch's mean over all ranks; validation and test metrics are computed on the
predictions and labels gathered from every rank (exact AUC over all rows).

This is ctr's own loop, not Lightning's (``docs/distributed.md`` says why): it validates
after each epoch (or every ``train.eval_every_n_steps`` batches), saves ``checkpoints/last``
(and ``checkpoints/best`` when the monitored metric improved) as
torch.distributed.checkpoint folders, and applies early stopping
(``ctr.train.distributed_epochs``); a multi-stage method trains stage by stage
(``ctr.train.distributed_stages``); at the end the best checkpoint is evaluated on valid
and test.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ctr.datasets import BatchLoader, Prepared, prepare
from ctr.embeddings.base import EmbeddingMethod
from ctr.embeddings.stages import Stage
from ctr.datasets.source import SPLITS, resolve_features
from ctr.recipe import Recipe
from ctr.train.checkpoints import Checkpointer, TrainState, check_resumable
from ctr.train.checks import TRAINING_MIN_ROWS, check_before_fit, check_schedule_floors, require_rows
from ctr.train.distributed_epochs import EpochLoop, Span, evaluate
from ctr.train.distributed_optim import Optimizers
from ctr.train.distributed_stages import ArchSteps, cycle, run_stages
from ctr.train.generators import seed_all
from ctr.train.launch import check_distributed, group_holds, process_group, shared_path
from ctr.train.stage_files import StageFiles, building_net, continues_training
from ctr.train.placement import Placement, use_threads
from ctr.train.optim import build_optimizer
from ctr.train.plots import plot_curves
from ctr.train.rundir import RunDir
from ctr.train.sharded import shard, shardable
from ctr.train.net import CTRNet, summary

log = logging.getLogger("ctr.train")


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
    module = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    dense = [p for p in net.parameters() if p.requires_grad and id(p) not in others]
    optimizer = Optimizers.build(recipe, dense, tables)
    if arch:
        config = net.embedding.config.arch_optimizer
        optimizer = optimizer.with_arch(build_optimizer(config, arch, "embedding.arch_optimizer"), stage.bilevel)
    return Parallel(module, optimizer, dense, False, sparse=tables, embedding=net.embedding)


def train_in_group(recipe: Recipe, root: Path, resume: bool) -> dict[str, Any]:
    """Trains ``recipe`` into run directory ``root`` as this process's rank of its process
    group (a rank a launcher started, or a group of one resuming a distributed run), after
    the refusals of a resume that cannot go on; returns (rank 0 writes) metrics.json."""
    if resume:
        RunDir(root).check_resumed_world(recipe.trainer.world_size)
    with process_group(recipe) as place:
        run = RunDir(shared_path(root))
        run.check_usable()
        with group_holds(run):
            run.check_start(recipe, resume)
            if resume:
                check_resumable(run.root)  # before the data and the run's recipe.yaml are touched
            with run.undone_on_refusal() if place.rank == 0 else nullcontext():  # rank 0 writes the folder
                return train(recipe, run, resume, place)


def train(recipe: Recipe, run: RunDir, resume: bool, place: Placement) -> dict[str, Any]:
    """Trains this rank's part of ``recipe`` into ``run``; returns (rank 0 writes) metrics.json."""
    check_distributed(recipe)
    use_threads(recipe.trainer.num_threads)
    seed_all(recipe.seed)
    prepared, net = _prepared_net(recipe, run, resume, place)
    fitting = Fitting(recipe, net, prepared, run, place, resume)
    try:
        check_before_fit(recipe, prepared, len(fitting.loaders["train"]), net, place.world_size)
        stage_seconds = {}
        if net.embedding.stages():
            stage_seconds = run_stages(net, run, place.rank, resume, fitting.stage, fitting.score, recipe.seed)
        else:
            fitting.whole()
        done = fitting.done or fitting.finished()
        metrics = _scored(done, fitting.loaders, place)
    finally:
        fitting.close()
    metrics.update(_training_figures(net, done, stage_seconds, run, place))
    if place.rank == 0:
        plot_curves(run.log_csv, run.curves)
        run.write_metrics(metrics)  # last: metrics.json marks the run finished
        log.info("run directory: %s (metrics.json, checkpoints/, logs/, curves.png)", run.root)
    dist.barrier()  # every rank leaves the process group together
    return metrics


def _prepared_net(recipe: Recipe, run: RunDir, resume: bool, place: Placement) -> tuple[Prepared, CTRNet]:
    """The run's data (prepared by rank 0 first, then read from the cache by the others) and
    its network; every rank refuses a resume whose inputs or encoding changed alike. Rank 0
    keeps the data's recipe and schema in the run directory."""
    recipe.data = resolve_features(recipe.data)
    if resume:
        run.check_resumed_inputs(recipe.data)  # every rank: the same refusal, before any encoding
    if place.rank == 0:
        prepared = prepare(recipe.data, False)  # the cache is filled once, then read by every rank
    dist.barrier()
    if place.rank != 0:
        prepared = prepare(recipe.data, False)
    prepared.schema.require_sparse()  # every rank: the same refusal
    if resume:
        run.check_resumed_encoding(prepared.root)  # every rank: the same refusal
    with building_net(run, resume):
        net = CTRNet(recipe, prepared.schema)  # a method refused (its budget) leaves nothing in the run directory
    if not resume:
        check_schedule_floors(recipe, net)  # every rank: the same refusal, before the run directory is written
    if place.rank == 0:
        run.keep_data(recipe, prepared.root, resume)
        log.info("run directory: %s", run.root)
        log.info("%s", summary(recipe, net, prepared))
    return prepared, net


def _scored(done: Done, loaders: dict[str, BatchLoader], place: Placement) -> dict[str, Any]:
    """The valid and test metrics of ``done``'s network (its best weights) over every rank's
    rows, and the seconds the test took."""
    metrics: dict[str, Any] = {"valid": evaluate(done.par.module, loaders["valid"], place, "valid")}
    start = time.perf_counter()
    metrics["test"] = evaluate(done.par.module, loaders["test"], place, "test")
    metrics["inference_seconds"] = time.perf_counter() - start
    return metrics


def _training_figures(net: CTRNet, done: Done, stage_seconds: dict[str, float], run: RunDir,
                      place: Placement) -> dict[str, Any]:
    """What metrics.json says of the training beside the metrics: the embedding's bytes,
    speed, time (the stages' sum in a multi-stage run), epochs, steps, the best checkpoint
    (relative to ``run``), the world size and sharding, stage seconds."""
    state = done.state
    figures = dict(embedding_bytes=net.embedding.stored_bytes(), full_embedding_bytes=net.embedding.full_bytes(),
                   train_samples_per_s=state.samples / state.seconds if state.seconds else 0.0,
                   train_seconds=sum(stage_seconds.values()) if stage_seconds else state.seconds,
                   epochs=state.epochs_begun, steps=state.step,
                   best_checkpoint=str(done.saver.best.relative_to(run.root)), world_size=place.world_size,
                   sharding=done.par.plan or "data_parallel (replicated, DDP)")
    if stage_seconds:
        figures["stage_seconds"] = stage_seconds
    return figures


@dataclass
class Done:
    """A finished training on this rank: its state, network and checkpoints (its best loaded)."""

    state: TrainState
    par: Parallel
    saver: Checkpointer


class Fitting:
    """Trains ``net`` on this rank: the whole run (``whole``), or one ``train`` stage of a
    multi-stage method (``stage``, with its own checkpoints and log; the last stage's are the
    run's). ``done`` is the last training finished."""

    def __init__(self, recipe: Recipe, net: CTRNet, prepared: Prepared, run: RunDir, place: Placement, resume: bool):
        self.recipe, self.net, self.prepared, self.run, self.place, self.resume = recipe, net, prepared, run, place, resume
        require_rows(recipe, prepared, SPLITS)
        self.loaders = {split: self._loader(split, split == "train") for split in SPLITS}
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
        continues = continues_training(self.net.embedding.stages(), index)
        return self._fit(self.run.checkpoints if last else folder / "checkpoints", span, stage, continues)

    def finished(self) -> Done:
        """The last stage's training as a resume finds it when every stage had finished
        before: its network on this rank, its state from ``last``, its best weights loaded."""
        par, saver = self._placed(self.run.checkpoints, self.net.embedding.stages()[-1])
        state = saver.restore()
        saver.load(saver.best)
        return Done(state, par, saver)

    def score(self) -> float:
        """Validation AUC of the network now, over every rank's rows (a procedure's score)."""
        return evaluate(self.net, self.loaders["valid"], self.place, "valid")["auc"]

    def close(self) -> None:
        for loader in self.loaders.values():
            loader.close()

    def _fit(self, folder: Path, span: Span, stage: Stage | None, score_start: bool = False) -> float:
        par, saver = self._placed(folder, stage)
        state = saver.restore() if self.resume and saver.last.exists() else TrainState()  # a folder not whole: refused
        valid = self._loader("valid", True, seed_offset=1) if stage is not None and stage.bilevel else None
        try:
            arch = None if valid is None else ArchSteps(self.net, cycle(valid, state.step), par.optimizer.arch,
                                                        self.place.world_size)
            loop = EpochLoop(self.recipe, par, self.loaders, saver, span, self.place, arch, score_start)
            trained = loop.run(state)
        finally:
            if valid is not None:
                valid.close()
        saver.load(saver.best)
        self.done = Done(trained, par, saver)
        return trained.seconds

    def _placed(self, folder: Path, stage: Stage | None) -> tuple[Parallel, Checkpointer]:
        """The network placed on this rank for ``stage`` (DMP or DDP) with its optimizers and
        schedules (over the stage's own epochs), and the checkpointer of ``folder``."""
        par = parallel(self.net, self.recipe, self.place.device, stage)
        epochs = (self.net.embedding.stage_settings(stage.name).epochs if stage else None) or self.recipe.train.epochs
        par.optimizer.follow_schedules(self.recipe.train, par.module.fused_optimizer if par.sharded else None, epochs)
        if self.place.rank == 0:
            count = self.place.world_size
            log.info("%d process%s: %s", count, "" if count == 1 else "es", _describe(par))
        return par, Checkpointer(folder, par.module, par.optimizer, par.sharded, self.place)

    def _loader(self, split: str, training: bool, seed_offset: int = 0) -> BatchLoader:
        recipe, place = self.recipe, self.place
        size = recipe.train.batch_size if training else recipe.train.eval_batch_size
        return BatchLoader(self.prepared.split_dir(split), self.prepared.schema, size, shuffle=training,
                           seed=recipe.seed + seed_offset, min_rows=TRAINING_MIN_ROWS if training else 0,
                           rank=place.rank, world_size=place.world_size,
                           split_batches=True, prefetch=recipe.data.prefetch,
                           shuffle_buffer=recipe.data.shuffle_buffer, device=place.device)


def _describe(par: Parallel) -> str:
    if not par.sharded:
        return "tables replicated under DDP (data-parallel)"
    return "tables sharded by TorchRec: " + "; ".join(f"{t} {where}" for t, where in par.plan.items())
