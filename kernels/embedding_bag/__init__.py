"""Table-batched embedding bag with a backend dispatch.

Resolution order: explicit request → ``$CTR_KERNEL_BACKEND`` → auto (a CUDA tensor and an
importable triton → ``triton``, else ``torch``). An explicit request for an unavailable
backend raises; nothing falls back silently.
"""

from __future__ import annotations

import enum
import importlib.util
import os

import torch
from torch import Tensor

from ctr.kernels.embedding_bag import reference

ENV_VAR = "CTR_KERNEL_BACKEND"


class Backend(str, enum.Enum):
    """Kernel implementations of the embedding bag."""

    TORCH = "torch"
    TRITON = "triton"
    FBGEMM = "fbgemm"


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run here."""


def available(backend: Backend, device: torch.device) -> str | None:
    """``None`` when ``backend`` can run on ``device``, else the reason it cannot."""
    if backend is Backend.TORCH:
        return None
    if backend is Backend.TRITON:
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            return "triton needs a CUDA device (or TRITON_INTERPRET=1 for the CPU interpreter)"
        return None
    if importlib.util.find_spec("fbgemm_gpu") is None:
        return "fbgemm_gpu is not installed"
    return None


def resolve_backend(requested: str | Backend | None, device: torch.device | str) -> Backend:
    """Picks the backend once: explicit request, then the environment, then auto."""
    device = torch.device(device)
    choice = requested or os.environ.get(ENV_VAR) or None
    if choice is None:
        auto = Backend.TRITON if device.type == "cuda" else Backend.TORCH
        return auto if available(auto, device) is None else Backend.TORCH
    try:
        backend = Backend(choice)
    except ValueError:
        names = ", ".join(b.value for b in Backend)
        raise BackendUnavailable(f"unknown kernel backend {choice!r} (choose from {names})") from None
    reason = available(backend, device)
    if reason is not None:
        raise BackendUnavailable(f"kernel backend {backend.value!r} requested but unavailable: {reason}")
    return backend


def embedding_bag(
    weight: Tensor,
    indices: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None = None,
    mode: str = "sum",
    backend: Backend = Backend.TORCH,
) -> Tensor:
    """Pools table rows per bag with the chosen backend; see ``reference.embedding_bag``.

    Returns:
        [num_bags, D].
    """
    if backend is Backend.TORCH:
        return reference.embedding_bag(weight, indices, offsets, per_sample_weights, mode)
    raise BackendUnavailable(f"backend {backend.value!r} has no embedding_bag implementation yet")
