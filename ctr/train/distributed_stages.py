"""The stages of a multi-stage embedding method in a distributed run (data-parallel).

Every rank runs every stage of ``ctr.train.stages`` on its copy of the network, in the
run-directory layout of a one-process run (rank 0 writes ``stages/``), so ``ctr eval`` and
``--resume`` read it the same way:

- a ``train`` stage trains the network under DDP (``fit_stage``, given by the distributed
  loop) with its own checkpoints (``stages/<i>-<name>/checkpoints``; the last stage's are
  the run's ``checkpoints``) and loads the stage's best checkpoint at its end;
- a bi-level stage's architecture step (``ArchSteps``) reads this rank's part of a shuffled
  validation batch of the training batch size; the architecture gradients are averaged over
  the ranks before the method's own update (``arch_update``) uses them, so every copy takes
  the step a one-process run takes on the whole validation batch;
- a ``procedure`` stage runs on every rank at once: its validation scores are AUCs over the
  predictions gathered from all ranks, and its randomness comes from the recipe's seed, so
  every copy makes the same choices (no rank's result is broadcast).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ctr.batch import Batch
from ctr.datasets import BatchLoader
from ctr.embeddings.stages import Stage, StageContext
from ctr.train.generators import restore_random, save_random
from ctr.train.rundir import RunDir
from ctr.train.stage_files import StageFiles, load_stage_state, load_torch, rewind, save_stage, save_torch
from ctr.train.net import CTRNet

log = logging.getLogger("ctr.train")

# trains one stage: (stage, index among the stages, whether it is the last) → seconds trained
FitStage = Callable[[Stage, int, bool], float]


@dataclass
class ArchSteps:
    """The architecture steps of a bi-level stage: one after every training step.

    Args:
        net: this rank's network (not its DDP wrapper: the step's backward is not DDP's).
        batches: this rank's parts of validation batches, endlessly (``cycle``).
        optimizer: ``embedding.arch_optimizer`` over the method's architecture parameters.
        world: the number of processes.
    """

    net: CTRNet
    batches: Iterator[Batch]
    optimizer: torch.optim.Optimizer
    world: int

    def step(self) -> None:
        """One first-order step on the mean BCE of the next validation batch over all ranks:
        this rank's loss is its rows' BCE sum × world / the batch's rows, and the gradient of
        each architecture parameter [any shape] is the mean of the ranks' (a hook)."""
        batch = next(self.batches)
        rows = torch.tensor([batch.size], dtype=torch.int64, device=batch.labels.device)
        dist.all_reduce(rows)
        scale = self.world / int(rows.item())
        self.net.eval()  # as a one-process run: no dropout noise in the architecture gradient
        try:
            logits, _ = self.net(batch)
            loss = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="sum") * scale
            with averaged_gradients(self.net.embedding.arch_parameters(), self.world):
                self.net.embedding.arch_update(loss, self.optimizer)
        finally:
            self.net.train()


@contextmanager
def averaged_gradients(params: list[nn.Parameter], world: int) -> Iterator[None]:
    """Inside the block, every gradient computed for ``params`` (by ``backward`` or
    ``torch.autograd.grad``) is replaced by its mean over the ranks (an all-reduce)."""
    handles = [p.register_hook(lambda grad: _mean_over_ranks(grad, world)) for p in params if p.requires_grad]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _mean_over_ranks(grad: Tensor, world: int) -> Tensor:
    total = grad.clone()
    dist.all_reduce(total)
    return total / world


def cycle(loader: BatchLoader, taken: int) -> Iterator[Batch]:
    """The loader's batches epoch after epoch, after the first ``taken`` (the architecture
    steps a resumed stage took before its checkpoint: one per training step)."""
    epoch, batches = divmod(taken, len(loader))
    loader.load_state_dict({"epoch": epoch, "batches": batches})
    while True:
        yield from loader


def run_stages(net: CTRNet, run: RunDir, rank: int, resume: bool, fit_stage: FitStage,
               score: Callable[[], float], seed: int) -> dict[str, float]:
    """Runs the method's stages in order on every rank (a resumed run restores those it
    finished); returns each stage's seconds."""
    files, method = StageFiles(run), net.embedding
    record = files.read() if resume else {"finished": [], "seconds": {}}
    if rank == 0 and not (resume and files.initial.exists()):
        save_torch(net.state_dict(), files.initial)
    dist.barrier()
    initial = load_torch(files.initial)
    stages = method.stages()
    for index, stage in enumerate(stages):
        folder = files.folder(index, stage)
        if stage.rewind:
            rewind(net, initial)
        method.begin_stage(stage)
        if stage.name in record["finished"]:
            load_stage_state(net, folder / "state.pt")
            restore_random(folder, rank, dist.get_world_size())
            log.info("stage %d/%d %s: finished earlier, restored", index + 1, len(stages), stage.name)
            continue
        log.info("stage %d/%d %s: started", index + 1, len(stages), stage.name)
        if stage.kind == "procedure":
            seconds = _procedure(method, stage, StageContext(score=score, seed=seed))
        else:
            seconds = fit_stage(stage, index, index == len(stages) - 1)
        save_random(folder, rank, dist.get_world_size())
        dist.barrier()  # every rank's generators are saved before rank 0 marks the stage finished
        if rank == 0:
            save_stage(net, stage, folder, seconds)
            files.finish(record, stage, seconds)
        else:
            record["finished"].append(stage.name)
            record["seconds"][stage.name] = seconds
        dist.barrier()
    return dict(record["seconds"])


def _procedure(method: Any, stage: Stage, context: StageContext) -> float:  # noqa: ANN401 (a MultiStageMixin)
    start = time.perf_counter()
    method.run_procedure(stage, context)
    return time.perf_counter() - start
