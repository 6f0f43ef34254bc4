"""Where a process trains: its rank among the run's processes, its device and its CPU threads.

Read from the recipe's ``trainer.accelerator`` and the launcher's environment; imports
neither Lightning nor the training loop, so ``ctr train``'s launcher checks a distributed
recipe before it starts the ranks without them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from ctr.errors import RecipeError
from ctr.host import usable_cores
from ctr.kernels.embedding_bag import ENV_VAR as BACKEND_ENV_VAR, BackendUnavailable, check_fused, resolve_backend
from ctr.recipe import Recipe
from ctr.recipe.checks import reads_backend
from ctr.train.optim import fused_optimizer

ACCELERATORS = ("cpu", "gpu", "cuda", "auto")
log = logging.getLogger("ctr.train")


@dataclass(frozen=True)
class Placement:
    """Where this process trains: its rank among ``world_size`` processes and its device."""

    rank: int
    world_size: int
    device: torch.device


def placement(recipe: Recipe) -> Placement:
    """This process's placement, from the recipe's accelerator and the launcher's environment
    (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` as torchrun sets them; one process otherwise).
    An accelerator, or a kernel backend of a method that reads one, that this machine lacks
    is a RecipeError (before any work)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    accelerator = recipe.trainer.accelerator
    check_accelerator(accelerator)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise RecipeError(f"trainer.accelerator: {accelerator!r} but this machine has no CUDA GPU; use cpu or auto")
    gpu = wants_gpu(accelerator)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if gpu else torch.device("cpu")
    if reads_backend(recipe.embedding.method):  # else $CTR_KERNEL_BACKEND names kernels the method never runs
        _check_backend(recipe, device)
    return Placement(rank, world, device)


def check_accelerator(accelerator: str) -> None:
    """Refuses a ``trainer.accelerator`` that is none of ``ACCELERATORS``."""
    if accelerator not in ACCELERATORS:
        raise RecipeError(f"trainer.accelerator: {accelerator!r}: choose from {', '.join(ACCELERATORS)}")


def wants_gpu(accelerator: str) -> bool:
    """Whether ``trainer.accelerator`` places a process on a CUDA GPU here."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def _check_backend(recipe: Recipe, device: torch.device) -> None:
    """Refuses a kernel backend (the recipe's, else the environment's) that cannot run on
    ``device``, or cannot apply the recipe's fused table update, naming where it was set."""
    source = "embedding.backend" if recipe.embedding.backend else f"${BACKEND_ENV_VAR}"
    try:
        resolve_backend(recipe.embedding.backend, device)
        if recipe.train.embedding_optimizer.fused:
            check_fused(recipe.embedding.backend, fused_optimizer(recipe.train.embedding_optimizer))
    except BackendUnavailable as err:
        raise RecipeError(f"{source}: {err}") from None


def use_threads(num_threads: int | str | None) -> None:
    """Sets torch's CPU threads (``trainer.num_threads``: a number, ``auto`` = the usable cores,
    None = torch's choice; a number above the usable cores is those cores, with a warning) and,
    with more than one thread, warns when the machine is already busier than its cores:
    threads then wait for each other (on a loaded 2-core machine 2 threads ran 10-20x slower
    than 1). The load average is the whole machine's, so it is weighed against all its cores,
    not this process's share (a bench cell pinned to 2 of 4 cores beside another is not
    oversubscribed at a load of 4)."""
    cores = usable_cores()
    if isinstance(num_threads, int) and num_threads > cores:  # libgomp aborts on absurd counts
        log.warning("trainer.num_threads: %d is more than the %d cores this process may run on; using %d (more "
                    "threads only wait for each other)", num_threads, cores, cores)
        num_threads = cores
    if num_threads is not None:
        torch.set_num_threads(cores if num_threads == "auto" else num_threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    machine = os.cpu_count() or cores
    if load > machine and torch.get_num_threads() > 1:
        log.warning("the machine is oversubscribed: load average %.1f over the machine's %d cores; ctr runs %d torch"
                    " threads (fewer, e.g. trainer.num_threads=1, can be much faster)",
                    load, machine, torch.get_num_threads())
