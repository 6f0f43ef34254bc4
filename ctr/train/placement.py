"""Where a process trains: its rank among the run's processes and its device.

Read from the recipe's ``trainer.accelerator`` and the launcher's environment; imports
neither Lightning nor the training loop, so ``ctr train``'s launcher checks a distributed
recipe before it starts the ranks without them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ctr.errors import RecipeError
from ctr.kernels.embedding_bag import BackendUnavailable, check_fused, resolve_backend
from ctr.recipe import Recipe
from ctr.recipe.checks import reads_backend
from ctr.train.optim import fused_optimizer

ACCELERATORS = ("cpu", "gpu", "cuda", "auto")


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
    ``device``, or cannot apply the recipe's fused table update."""
    try:
        resolve_backend(recipe.embedding.backend, device)
        if recipe.train.embedding_optimizer.fused:
            check_fused(recipe.embedding.backend, fused_optimizer(recipe.train.embedding_optimizer))
    except BackendUnavailable as err:
        raise RecipeError(f"embedding.backend: {err}") from None
