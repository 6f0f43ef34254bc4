"""Kernel tests run the Triton kernels through the CPU interpreter when there is no GPU.

``TRITON_INTERPRET`` must be set before triton decorates a kernel, so it is set here (when
there is no CUDA device), before any test module imports ``ctr.kernels.embedding_bag.triton``.
CPU-tensor Triton tests need the interpreter; GPU tests need compiled kernels, so on a GPU
machine they run in a process without ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_FBGEMM = importlib.util.find_spec("fbgemm_gpu") is not None

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
# Triton picks interpreted or compiled kernels once, at import: a process runs one or the other.
needs_interpreter = pytest.mark.skipif(
    not (HAS_TRITON and INTERPRETING), reason="runs Triton on CPU tensors: needs TRITON_INTERPRET=1 and triton"
)
needs_compiled_triton = pytest.mark.skipif(
    INTERPRETING, reason="needs compiled Triton: run `python -m pytest tests/kernels -m gpu` without TRITON_INTERPRET"
)
needs_fbgemm = pytest.mark.skipif(not HAS_FBGEMM, reason="fbgemm_gpu is not installed")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def bags(lengths: list[int], rows: int, seed: int = 0, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids in [0, rows) for bags of the given lengths: (indices [N], offsets [B + 1])."""
    gen = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(lengths, dtype=torch.int64)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    torch.cumsum(lengths_t, 0, out=offsets[1:])
    indices = torch.randint(0, rows, (int(lengths_t.sum()),), generator=gen)
    return indices.to(device), offsets.to(device)
