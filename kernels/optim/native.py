"""The row-update rules' C kernels (``rows.c``) for sparse gradients on the CPU."""

from __future__ import annotations

import torch
from torch import Tensor

from ctr.kernels import native


def fits(weight: Tensor, state_sum: Tensor) -> bool:
    """Whether ``adagrad_sparse`` takes these (fp32 CPU contiguous, the library built)."""
    return native.usable(weight, state_sum)


def adagrad_sparse(weight: Tensor, state_sum: Tensor, grad: Tensor, lr: float, eps: float) -> None:
    """Adagrad (``s += g²; w -= lr·g / (√s + eps)``) from a row-sparse gradient in one pass
    (``adagrad_sparse``), merging repeated rows first if the gradient is not coalesced."""
    status = _adagrad_sparse(weight, grad, state_sum, lr, eps)
    if status == native.NOT_COALESCED:  # rows out of order or repeated: merge them first
        status = _adagrad_sparse(weight, grad.coalesce(), state_sum, lr, eps)
    native.check(status, "adagrad_sparse")


def _adagrad_sparse(weight: Tensor, grad: Tensor, state_sum: Tensor, lr: float, eps: float) -> int:
    rows, values = grad._indices()[0].contiguous(), grad._values().contiguous()
    return native.library().adagrad_sparse(
        native.pointer(rows), native.pointer(values), rows.numel(), weight.shape[0], weight.shape[1],
        native.pointer(weight), native.pointer(state_sum), lr, eps, torch.get_num_threads(),
    )
