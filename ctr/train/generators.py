"""The random generators (python, numpy, torch, CUDA): their state, and its file in a folder
(``random-<rank>.pt``: a finished stage's, a distributed checkpoint's).

Imports neither Lightning nor the training loop (``ctr train --resume``'s launcher checks a
distributed run's checkpoints with ``ctr.train.checkpoints``, which restores them).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctr.train.stage_files import load_torch, save_torch


def seed_all(seed: int) -> None:
    """Seeds Python's, numpy's and torch's (every device's) generators with ``seed``, as
    Lightning's ``seed_everything`` seeds a one-process run: the distributed loop's ranks,
    which run without Lightning, draw the same numbers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def random_state() -> dict[str, Any]:
    """The random generators' state (python, numpy, torch, CUDA), as tensors and plain values
    that checkpoints load without unpickling code."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict[str, Any]) -> None:
    """Puts the random generators back to ``state`` (``random_state``'s)."""
    random.setstate(state["python"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_random(folder: Path, rank: int, world_size: int = 1) -> None:
    """This rank's random generators as a stage leaves them (``random-<rank>.pt``)."""
    save_torch({"world_size": world_size, **random_state()}, folder / f"random-{rank}.pt")


def restore_random(folder: Path, rank: int, world_size: int = 1) -> None:
    """Puts this rank's random generators where the finished stage of ``folder`` left them:
    the next stage's fresh tables and dropout masks are those of the uninterrupted run. Left
    as the restore finds them when the stage was saved on another world size (its ranks'
    states are not this run's) or before ctr kept them."""
    path = folder / f"random-{rank}.pt"
    if path.exists():
        saved = load_torch(path)
        if saved.get("world_size", 1) == world_size:
            set_random_state(saved)
