"""Triton kernels of the table-batched embedding bag (GPU; CPU via ``TRITON_INTERPRET=1``).

Design after FBGEMM's table-batched embedding (Mudigere et al., "Software-Hardware
Co-design for Fast and Scalable Training of Deep Learning Recommendation Models",
ISCA 2022, §4): every table of a collection lives in one weight buffer and is read by one
launch; the backward sorts ids by row so that each unique row is reduced by one program in
a fixed order (deterministic, no atomics) and the optimizer update is applied right there,
so no gradient tensor of the table is ever built.

- forward: one program per bag; it walks the bag's ids in blocks of ``BLOCK_N``, gathers
  the rows [BLOCK_N, BLOCK_D], scales them by per-sample weights, and accumulates in fp32
  (sum, or mean = sum / len; an empty bag gives zeros). Output has the weight's dtype.
- backward: one program per unique row; it walks that row's ids (sorted order), gathers the
  output gradients of their bags and sums them in fp32, then applies the fused rule
  (``RULE``: 0 = store the gradient for a sparse gradient tensor, 1 = SGD, 2 = Adagrad,
  3 = row-wise Adagrad, 4 = lazy Adam). A row is handled whole (``BLOCK_D >= D``) because
  row-wise Adagrad needs the mean of the whole row's squared gradient.

Sorting and the unique/segment bookkeeping run as torch ops (``reference.sort_ids``), as
FBGEMM does with CUB's radix sort.

Deviation: a row that occurs very often in one batch (e.g. padding) is reduced by a single
program; FBGEMM splits such long segments over several warps.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ctr.kernels.embedding_bag import reference
from ctr.kernels.embedding_bag.fused import FusedOptimizer, Rule
from ctr.kernels.embedding_bag.reference import Lookup, SortedIds

RULE_CODES = {Rule.SGD: 1, Rule.ADAGRAD: 2, Rule.ROWWISE_ADAGRAD: 3, Rule.ADAM: 4}
GRAD_ONLY = 0
MAX_BLOCK_N = 32


@triton.jit
def _pool_kernel(
    weight_ptr, indices_ptr, offsets_ptr, scales_ptr, out_ptr,
    D, stride_w, stride_out,
    HAS_SCALES: tl.constexpr, MEAN: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    bag = tl.program_id(0).to(tl.int64)
    start = tl.load(offsets_ptr + bag)
    end = tl.load(offsets_ptr + bag + 1)
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < D
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for first in range(start, end, BLOCK_N):
        pos = first + tl.arange(0, BLOCK_N)
        mask = pos < end
        rows = tl.load(indices_ptr + pos, mask=mask, other=0).to(tl.int64)
        vals = tl.load(
            weight_ptr + rows[:, None] * stride_w + cols[None, :],
            mask=mask[:, None] & col_mask[None, :], other=0.0,
        ).to(tl.float32)
        if HAS_SCALES:
            scale = tl.load(scales_ptr + pos, mask=mask, other=0.0).to(tl.float32)
            vals = vals * scale[:, None]
        acc += tl.sum(vals, axis=0)
    if MEAN:
        acc = acc / tl.maximum(end - start, 1).to(tl.float32)
    tl.store(out_ptr + bag * stride_out + cols, acc.to(out_ptr.dtype.element_ty), mask=col_mask)


@triton.jit
def _sorted_backward_kernel(
    grad_ptr, bags_ptr, scales_ptr, segments_ptr, rows_ptr,
    weight_ptr, state1_ptr, state2_ptr, out_ptr,
    D, stride_g, stride_w, lr, eps, beta1, beta2,
    HAS_SCALES: tl.constexpr, RULE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    unique = tl.program_id(0).to(tl.int64)
    start = tl.load(segments_ptr + unique)
    end = tl.load(segments_ptr + unique + 1)
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < D
    grad = tl.zeros([BLOCK_D], dtype=tl.float32)
    for first in range(start, end, BLOCK_N):
        pos = first + tl.arange(0, BLOCK_N)
        mask = pos < end
        bags = tl.load(bags_ptr + pos, mask=mask, other=0).to(tl.int64)
        vals = tl.load(
            grad_ptr + bags[:, None] * stride_g + cols[None, :],
            mask=mask[:, None] & col_mask[None, :], other=0.0,
        ).to(tl.float32)
        if HAS_SCALES:
            scale = tl.load(scales_ptr + pos, mask=mask, other=0.0)
            vals = vals * scale[:, None]
        grad += tl.sum(vals, axis=0)
    if RULE == 0:
        tl.store(out_ptr + unique * D + cols, grad, mask=col_mask)
    else:
        row = tl.load(rows_ptr + unique).to(tl.int64)
        w_ptrs = weight_ptr + row * stride_w + cols
        w = tl.load(w_ptrs, mask=col_mask, other=0.0).to(tl.float32)
        if RULE == 1:
            w = w - lr * grad
        elif RULE == 2:
            acc = tl.load(state1_ptr + row * D + cols, mask=col_mask, other=0.0) + grad * grad
            tl.store(state1_ptr + row * D + cols, acc, mask=col_mask)
            w = w - lr * grad / (tl.sqrt(acc) + eps)
        elif RULE == 3:
            acc = tl.load(state1_ptr + row) + tl.sum(grad * grad, axis=0) / D
            tl.store(state1_ptr + row, acc)
            w = w - (lr / (tl.sqrt(acc) + eps)) * grad
        else:
            m = tl.load(state1_ptr + row * D + cols, mask=col_mask, other=0.0)
            v = tl.load(state2_ptr + row * D + cols, mask=col_mask, other=0.0)
            m = m + (1.0 - beta1) * (grad - m)
            v = v + (1.0 - beta2) * (grad * grad - v)
            tl.store(state1_ptr + row * D + cols, m, mask=col_mask)
            tl.store(state2_ptr + row * D + cols, v, mask=col_mask)
            w = w - lr * m / (tl.sqrt(v) + eps)
        tl.store(w_ptrs, w.to(weight_ptr.dtype.element_ty), mask=col_mask)


def _block_n(ids: int, groups: int) -> int:
    """Ids gathered per loop step: the mean group size, rounded up to a power of 2, ≤ 32."""
    mean = -(-ids // max(groups, 1))
    return min(MAX_BLOCK_N, triton.next_power_of_2(max(mean, 1)))


def _num_warps(block_n: int, block_d: int) -> int:
    return max(1, min(8, block_n * block_d // 256))


def forward(weight: Tensor, indices: Tensor, offsets: Tensor, per_sample_weights: Tensor | None, mode: str) -> Tensor:
    """Pooled lookup of every bag in one launch.

    Args:
        weight: [R, D] fp32/fp16/bf16, rows contiguous (``stride(1) == 1``).
        indices: int32/int64 [N] global rows.
        offsets: int64 [num_bags + 1].
        per_sample_weights: optional [N] (sum mode only).
        mode: ``sum`` or ``mean``.

    Returns:
        [num_bags, D] in ``weight``'s dtype (accumulated in fp32).
    """
    reference.check_mode(mode, per_sample_weights)
    weight = weight.detach()
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    num_bags, dim = offsets.numel() - 1, weight.shape[1]
    out = torch.empty(num_bags, dim, dtype=weight.dtype, device=weight.device)
    if num_bags == 0:
        return out
    scales = None if per_sample_weights is None else per_sample_weights.detach().float().contiguous()
    block_n, block_d = _block_n(indices.numel(), num_bags), triton.next_power_of_2(dim)
    _pool_kernel[(num_bags,)](
        weight, indices.contiguous(), offsets.contiguous(), scales if scales is not None else weight, out,
        dim, weight.stride(0), out.stride(0),
        HAS_SCALES=scales is not None, MEAN=mode == "mean", BLOCK_N=block_n, BLOCK_D=block_d,
        num_warps=_num_warps(block_n, block_d),
    )
    return out


def _launch_backward(
    grad_out: Tensor, ids: SortedIds, weight: Tensor, rule: int, out: Tensor | None,
    state: dict[str, Tensor] | None = None, opt: FusedOptimizer | None = None, lr: float = 0.0,
) -> None:
    unique = ids.rows.numel()
    if unique == 0:
        return
    grad_out = grad_out.contiguous()
    dim = weight.shape[1]
    state = state or {}
    state1 = state.get("sum", state.get("exp_avg", weight))
    state2 = state.get("exp_avg_sq", weight)
    beta1, beta2 = opt.betas if opt is not None else (0.0, 0.0)
    block_n, block_d = _block_n(ids.bags.numel(), unique), triton.next_power_of_2(dim)
    _sorted_backward_kernel[(unique,)](
        grad_out, ids.bags, ids.scales if ids.scales is not None else grad_out, ids.segments, ids.rows,
        weight, state1, state2, out if out is not None else grad_out,
        dim, grad_out.stride(0), weight.stride(0), lr, opt.eps if opt is not None else 0.0, beta1, beta2,
        HAS_SCALES=ids.scales is not None, RULE=rule, BLOCK_N=block_n, BLOCK_D=block_d,
        num_warps=_num_warps(block_n, block_d),
    )


def segment_grad(grad_out: Tensor, lookup: Lookup) -> Tensor:
    """Gradient of each unique row [U, D] fp32 (for a sparse gradient tensor)."""
    ids = lookup.sorted()
    out = torch.empty(ids.rows.numel(), grad_out.shape[1], dtype=torch.float32, device=grad_out.device)
    _launch_backward(grad_out, ids, grad_out, GRAD_ONLY, out)
    return out


def backward_update(grad_out: Tensor, weight: Tensor, state: dict[str, Tensor], lookup: Lookup, opt: FusedOptimizer) -> None:
    """The fused backward: reduce each unique row and apply ``opt`` to it, in one launch.

    Args:
        grad_out: [num_bags, D] gradient of the pooled output.
        weight: [R, D] table with contiguous rows, updated in place.
        state: ``opt.init_state(weight)``, updated in place.
        lookup: the forward's inputs.
        opt: the fused optimizer.
    """
    if weight.stride(1) != 1:
        raise ValueError("the fused Triton backward needs a weight with contiguous rows")
    lr = opt.begin_step(state)
    _launch_backward(grad_out, lookup.sorted(), weight, RULE_CODES[opt.rule], None, state, opt, lr)
