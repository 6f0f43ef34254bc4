"""The FM op's C kernels (``fm.c``): the pairwise term in one pass over the fields each way,
optionally assembling the fields from sparse and numeric features in the same pass."""

from __future__ import annotations

import torch
from torch import Tensor

from ctr.kernels import native


def fits(*tensors: Tensor, rows: tuple[Tensor, ...] = ()) -> bool:
    """Whether the C kernels take these tensors (see ``native.usable``)."""
    return native.usable(*tensors, rows=rows)


def forward(sparse: Tensor, dense: Tensor | None, vectors: Tensor | None, weight: Tensor,
            fields: Tensor | None) -> tuple[Tensor, ...]:
    """``fm_forward``: FM output [B] and Σ_f v_f [B, D], plus the assembled fields
    [B, S + Nd, D] when ``fields`` is given (an empty tensor to resize)."""
    b, s, d = sparse.shape
    nd = 0 if vectors is None else vectors.shape[0]
    out, total = sparse.new_empty(b), sparse.new_empty(b, d)
    if fields is not None:
        fields.resize_(b, s + nd, d)
    status = native.library().fm_forward(
        native.pointer(sparse), sparse.stride(0), sparse.stride(1), native.pointer(dense), native.pointer(vectors),
        native.pointer(weight), b, s, nd, d, native.pointer(fields), native.pointer(out), native.pointer(total),
        torch.get_num_threads(),
    )
    native.check(status, "fm_forward")
    return (out, total) if fields is None else (out, total, fields)


def backward(fields: Tensor, dense: Tensor | None, weight: Tensor, total: Tensor, grad: Tensor,
             grad_in: Tensor | None, num_sparse: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """``fm_backward``: the fields' gradient [B, F, D] (``grad_in``, another block's gradient
    of the fields or None for zero, plus the FM's, written to a new tensor), and the gradients
    of ``weight`` [F, D] and of the numeric vectors [Nd, D] (or None)."""
    b, f, d = fields.shape
    grad_fields = torch.empty_like(fields)
    grad_weight = torch.empty_like(weight)
    grad_vectors = fields.new_empty(f - num_sparse, d) if f > num_sparse else None
    status = native.library().fm_backward(
        native.pointer(fields), native.pointer(dense), native.pointer(weight), native.pointer(total),
        native.pointer(grad), b, num_sparse, f - num_sparse, d, native.pointer(grad_in), native.pointer(grad_fields),
        native.pointer(grad_weight), native.pointer(grad_vectors), torch.get_num_threads(),
    )
    native.check(status, "fm_backward")
    return grad_fields, grad_weight, grad_vectors
