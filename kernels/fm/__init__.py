"""The factorization machine's pairwise term as one op, its gradient summed with another block's.

Public functions:
- ``fm(fields, weight)``: FM output [B] of fields [B, F, D] (without bias) and the fields
  passed through for another block that reads them too (DeepFM's DNN): the FM adds that
  block's gradient to its own in the pass that computes it, saving a pass. The sum goes to a
  new tensor: the incoming gradient may be another branch's too (an addition hands both
  inputs one tensor), so it is never written.
- ``fm_fields(sparse, dense, vectors, weight)``: the same over fields assembled from sparse
  fields and numeric values × vectors, in one pass each way on the CPU.

Dispatch: the C kernels (``native.py``) for fp32 CPU tensors when ``ctr.kernels.native`` is
available (decided once per process), else the torch reference (``reference.py``). Both
compute the same values (tests hold them equal). While ``torch.export`` traces, the
reference's plain torch ops run (an exported program holds no native kernel).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ctr.kernels.fm import native, reference

__all__ = ["fm", "fm_fields"]


def fm(fields: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """FM output [B] of ``fields`` [B, F, D] with first-order vectors ``weight`` [F, D], and
    the fields passed through (a view whose gradient the FM's is added into)."""
    if fields.dim() != 3:
        raise ValueError(f"fm: fields must be [B, F, D], got {list(fields.shape)}")
    _check_shape("first-order vectors", weight, fields.shape[1:])
    if torch.compiler.is_exporting():
        return reference.forward(fields, weight)[0], fields
    return _FM.apply(fields, weight)


def fm_fields(sparse: Tensor, dense: Tensor, vectors: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """FM output [B] over the fields [B, S + Nd, D] (sparse [B, S, D], then each numeric value
    of ``dense`` [B, Nd] times its vector of ``vectors`` [Nd, D]), and those fields."""
    if sparse.dim() != 3:
        raise ValueError(f"fm: sparse fields must be [B, S, D], got {list(sparse.shape)}")
    (batch, num_sparse, dim), num_dense = sparse.shape, vectors.shape[0]
    _check_shape("numeric values", dense, (batch, num_dense))
    _check_shape("numeric vectors", vectors, (num_dense, dim))
    _check_shape("first-order vectors", weight, (num_sparse + num_dense, dim))
    if not torch.compiler.is_exporting() and native.fits(dense, vectors, weight, rows=(sparse,)):
        return _FMFields.apply(sparse, dense, vectors, weight)
    return fm(reference.numeric_fields(sparse, dense, vectors), weight)


def _check_shape(name: str, tensor: Tensor, shape: tuple[int, ...]) -> None:
    """Raises ValueError unless ``tensor`` has ``shape`` (the C kernels read it by that shape
    without bounds, and torch's ops would broadcast some mismatches)."""
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"fm: {name} must be {list(shape)} for these fields, got {list(tensor.shape)}")


class _FM(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, fields: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        if native.fits(fields, weight):
            out, total = native.forward(fields, None, None, weight, None)
        else:
            out, total = reference.forward(fields, weight)
        ctx.save_for_backward(fields, weight, total)
        return out, fields.view_as(fields)

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None, grad_shared: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        fields, weight, total = ctx.saved_tensors
        if grad is None:
            return grad_shared, None
        grad_in = None if grad_shared is None else grad_shared.contiguous().view_as(fields)
        grad = grad.contiguous()
        if native.fits(fields, weight, grad, *([] if grad_in is None else [grad_in])):
            grad_fields, grad_weight, _ = native.backward(fields, None, weight, total, grad, grad_in, fields.shape[1])
        else:
            grad_fields, grad_weight = reference.backward(fields, weight, total, grad, grad_in)
        return grad_fields, grad_weight if ctx.needs_input_grad[1] else None


class _FMFields(torch.autograd.Function):
    """Fields assembly and FM in one C pass each way; the sparse fields' gradient is a view of
    the fields' and the numeric vectors' is summed in that pass.

    Args: sparse [B, S, D] (unit last stride); dense [B, Nd]; vectors [Nd, D]; weight [S + Nd, D].
    Returns: FM output [B] and the fields [B, S + Nd, D].
    """

    @staticmethod
    def forward(ctx: Any, sparse: Tensor, dense: Tensor, vectors: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        out, total, fields = native.forward(sparse, dense, vectors, weight, sparse.new_empty(0))
        ctx.save_for_backward(fields, dense, vectors, weight, total)
        ctx.num_sparse = sparse.shape[1]
        return out, fields

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None, grad_fields: Tensor | None) -> tuple[Tensor | None, ...]:
        fields, dense, vectors, weight, total = ctx.saved_tensors
        grad = fields.new_zeros(fields.shape[0]) if grad is None else grad.contiguous()
        grad_in = None if grad_fields is None else grad_fields.contiguous()
        grad_fields, grad_weight, grad_vectors = native.backward(fields, dense, weight, total, grad, grad_in,
                                                                 ctx.num_sparse)
        numeric = grad_fields[:, ctx.num_sparse :]
        grad_dense = (numeric * vectors).sum(-1) if ctx.needs_input_grad[1] else None
        return grad_fields[:, : ctx.num_sparse], grad_dense, grad_vectors, grad_weight
