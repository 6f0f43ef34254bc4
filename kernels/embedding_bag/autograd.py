"""Autograd wrappers shared by the kernel backends.

``PooledLookup`` gives the table a sparse gradient built by the backend's sorted backward
(one row per unique id, coalesced), for an outside sparse optimizer. ``FusedLookup``
updates the table inside backward with a fused optimizer rule and returns no gradient for
it: the table is then a buffer, and a zero-size ``trigger`` tensor that requires grad makes
autograd call the backward.

A backend is a module with ``forward(weight, indices, offsets, per_sample_weights, mode)``,
``segment_grad(grad_out, lookup)`` and ``backward_update(grad_out, weight, state, lookup, opt, lr)``;
one that sets ``READS_GROUPED = True`` takes a grouped [G, n, D] gradient as it comes.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from ctr.kernels.embedding_bag import reference
from ctr.kernels.optim.rules import FusedOptimizer
from ctr.kernels.embedding_bag.reference import Lookup


class PooledLookup(torch.autograd.Function):
    """Pooled lookup [num_bags, D] with a sparse, coalesced gradient for ``weight``."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, indices: Tensor, offsets: Tensor, per_sample_weights: Tensor | None,
                mode: str, impl: ModuleType) -> Tensor:
        ctx.lookup = Lookup(indices, offsets, per_sample_weights, mode, weight.shape[0])
        ctx.impl = impl
        ctx.save_for_backward(weight)
        return impl.forward(weight, indices, offsets, per_sample_weights, mode)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        (weight,) = ctx.saved_tensors
        lookup: Lookup = ctx.lookup
        grad_weight = grad_psw = None
        if ctx.needs_input_grad[0]:
            values = ctx.impl.segment_grad(grad_out, lookup)
            rows = lookup.sorted().rows.unsqueeze(0)
            grad_weight = torch.sparse_coo_tensor(
                rows, values.to(weight.dtype), weight.shape, is_coalesced=True, check_invariants=False
            )
        if ctx.needs_input_grad[3]:
            grad_psw = reference.per_sample_weight_grad(weight, lookup.indices, lookup.offsets, grad_out)
            grad_psw = grad_psw.to(lookup.per_sample_weights.dtype)
        return grad_weight, None, None, grad_psw, None, None


class FusedLookup(torch.autograd.Function):
    """Pooled lookup [num_bags, D] (or viewed as ``groups`` groups of bags: [G, n, D]) whose
    backward applies ``opt`` to ``weight`` in place. The torch backend reads a grouped output's
    gradient in place whatever its strides (``reference.bag_rows``)."""

    @staticmethod
    def forward(ctx: Any, trigger: Tensor, weight: Tensor, indices: Tensor, offsets: Tensor,
                per_sample_weights: Tensor | None, mode: str, impl: ModuleType, opt: FusedOptimizer,
                state: dict[str, Tensor], groups: int, lookup: Lookup, lr: float | None) -> Tensor:
        ctx.lookup, ctx.lr = lookup, lr
        ctx.impl, ctx.opt, ctx.state, ctx.weight = impl, opt, state, weight
        pooled = impl.forward(weight, indices, offsets, per_sample_weights, mode)
        return reference.grouped(pooled, groups)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        lookup: Lookup = ctx.lookup
        dim = grad_out.shape[-1]  # a strided grouped gradient is flattened only where needed (it copies)
        grad_psw = None
        if ctx.needs_input_grad[4]:  # before the update changes the rows
            flat = grad_out.reshape(-1, dim)
            grad_psw = reference.per_sample_weight_grad(ctx.weight, lookup.indices, lookup.offsets, flat)
            grad_psw = grad_psw.to(lookup.per_sample_weights.dtype)
        grad = grad_out if getattr(ctx.impl, "READS_GROUPED", False) else grad_out.reshape(-1, dim).contiguous()
        ctx.impl.backward_update(grad, ctx.weight, ctx.state, lookup, ctx.opt, ctx.lr)
        return grad_out.new_zeros(0), None, None, None, grad_psw, None, None, None, None, None, None, None
