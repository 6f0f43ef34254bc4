"""Triton kernels of the table-batched embedding bag (GPU; CPU via ``TRITON_INTERPRET=1``).

Design after FBGEMM's table-batched embedding (Mudigere et al., "Software-Hardware
Co-design for Fast and Scalable Training of Deep Learning Recommendation Models",
ISCA 2022, §4): every table of a collection lives in one weight buffer and is read by one
launch; the backward sorts ids by row so that each unique row is reduced in a fixed order
(deterministic, no atomics) and the optimizer update is applied right there, so no
gradient tensor of the table is ever built.

- forward: a program pools a block of ``BLOCK_B`` consecutive bags; at step ``j`` it
  gathers the ``j``-th row of every bag of the block ([BLOCK_B, BLOCK_D], whole rows),
  scales it by the per-sample weight and accumulates in fp32 (sum, or mean = sum / len; an
  empty bag gives zeros). Output has the weight's dtype. Blocks of bags, rather than one
  program per bag, keep many rows in flight when bags hold a single id (pooling factor 1).
- backward: a program owns a block of ``BLOCK_U`` unique rows; at step ``j`` it gathers
  the output gradient of the bag of each row's ``j``-th id (sorted order) and sums in fp32,
  then applies the fused rule (``RULE``: 0 = store the gradient for a sparse gradient
  tensor, 1 = SGD, 2 = Adagrad, 3 = row-wise Adagrad, 4 = lazy Adam). Rows are handled whole
  (``BLOCK_D >= D``) because row-wise Adagrad needs the mean of the row's squared gradient.

Masks: a finished bag's (or row's) 2-D row mask is read off its loaded id (-1 past the end)
rather than reusing the 1-D step mask in a second layout, which breaks triton's
layout-conversion pass for sm_90 at some tile shapes (triton 3.6 and 3.7).

Sorting and the unique/segment bookkeeping run as torch ops (``reference.sort_ids``), as
FBGEMM does with CUB's radix sort.

Deviation: a row that occurs very often in one batch (e.g. padding) is reduced serially by
its program, which then runs as many steps as that row has ids; FBGEMM splits such long
segments over several warps.
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
# A program works on a [rows, BLOCK_D] tile of about TILE elements with one warp per
# ELEMENTS_PER_WARP of them: 1,024 and 256 were fastest on average over the DLRM-like grid
# (D 64/128 x L 1/20) on an H200 (benchmarks/triton_tiles.py, docs/benchmarks/kernels.md).
TILE = 1024
ELEMENTS_PER_WARP = 256
MAX_TILE_ROWS = 128


@triton.jit
def _pool_kernel(
    weight_ptr, indices_ptr, offsets_ptr, scales_ptr, out_ptr,
    num_bags, D, stride_w, stride_out,
    HAS_SCALES: tl.constexpr, MEAN: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    bags = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    bag_mask = bags < num_bags
    starts = tl.load(offsets_ptr + bags, mask=bag_mask, other=0)
    lengths = tl.load(offsets_ptr + bags + 1, mask=bag_mask, other=0) - starts
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < D
    acc = tl.zeros([BLOCK_B, BLOCK_D], dtype=tl.float32)
    for step in range(0, tl.max(lengths, axis=0).to(tl.int32)):
        live = step < lengths
        pos = starts + step
        rows = tl.load(indices_ptr + pos, mask=live, other=-1).to(tl.int64)
        vals = tl.load(
            weight_ptr + rows[:, None] * stride_w + cols[None, :],
            mask=(rows >= 0)[:, None] & col_mask[None, :], other=0.0,
        ).to(tl.float32)
        if HAS_SCALES:
            vals = vals * tl.load(scales_ptr + pos, mask=live, other=0.0)[:, None]
        acc += vals
    if MEAN:
        acc = acc / tl.maximum(lengths, 1).to(tl.float32)[:, None]
    out_ptrs = out_ptr + bags[:, None] * stride_out + cols[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=bag_mask[:, None] & col_mask[None, :])


@triton.jit
def _sorted_backward_kernel(
    grad_ptr, bags_ptr, scales_ptr, segments_ptr, rows_ptr,
    weight_ptr, state1_ptr, state2_ptr, out_ptr,
    num_unique, D, stride_g, stride_w, lr, eps, beta1, beta2,
    HAS_SCALES: tl.constexpr, RULE: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_D: tl.constexpr,
):
    units = tl.program_id(0).to(tl.int64) * BLOCK_U + tl.arange(0, BLOCK_U)
    unit_mask = units < num_unique
    starts = tl.load(segments_ptr + units, mask=unit_mask, other=0)
    counts = tl.load(segments_ptr + units + 1, mask=unit_mask, other=0) - starts
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < D
    grad = tl.zeros([BLOCK_U, BLOCK_D], dtype=tl.float32)
    for step in range(0, tl.max(counts, axis=0).to(tl.int32)):  # each row's ids in sorted order: deterministic
        live = step < counts
        pos = starts + step
        bags = tl.load(bags_ptr + pos, mask=live, other=-1).to(tl.int64)
        vals = tl.load(
            grad_ptr + bags[:, None] * stride_g + cols[None, :],
            mask=(bags >= 0)[:, None] & col_mask[None, :], other=0.0,
        ).to(tl.float32)
        if HAS_SCALES:
            vals = vals * tl.load(scales_ptr + pos, mask=live, other=0.0)[:, None]
        grad += vals
    tile_mask = unit_mask[:, None] & col_mask[None, :]
    if RULE == 0:
        tl.store(out_ptr + units[:, None] * D + cols[None, :], grad, mask=tile_mask)
    else:
        rows = tl.load(rows_ptr + units, mask=unit_mask, other=0).to(tl.int64)
        _update_rows(grad, rows, cols, unit_mask, tile_mask, weight_ptr, state1_ptr, state2_ptr,
                     D, stride_w, lr, eps, beta1, beta2, RULE)


@triton.jit
def _update_rows(grad, rows, cols, unit_mask, tile_mask, weight_ptr, state1_ptr, state2_ptr,
                 D, stride_w, lr, eps, beta1, beta2, RULE: tl.constexpr):
    """Applies rule ``RULE`` to table rows ``rows`` given their fp32 gradient tile."""
    w_ptrs = weight_ptr + rows[:, None] * stride_w + cols[None, :]
    w = tl.load(w_ptrs, mask=tile_mask, other=0.0).to(tl.float32)
    state_at = rows[:, None] * D + cols[None, :]
    if RULE == 1:
        w = w - lr * grad
    elif RULE == 2:
        acc = tl.load(state1_ptr + state_at, mask=tile_mask, other=0.0) + grad * grad
        tl.store(state1_ptr + state_at, acc, mask=tile_mask)
        w = w - lr * grad / (tl.sqrt(acc) + eps)
    elif RULE == 3:
        acc = tl.load(state1_ptr + rows, mask=unit_mask, other=0.0) + tl.sum(grad * grad, axis=1) / D
        tl.store(state1_ptr + rows, acc, mask=unit_mask)
        w = w - (lr / (tl.sqrt(acc) + eps))[:, None] * grad
    else:
        m = tl.load(state1_ptr + state_at, mask=tile_mask, other=0.0)
        v = tl.load(state2_ptr + state_at, mask=tile_mask, other=0.0)
        m = m + (1.0 - beta1) * (grad - m)
        v = v + (1.0 - beta2) * (grad * grad - v)
        tl.store(state1_ptr + state_at, m, mask=tile_mask)
        tl.store(state2_ptr + state_at, v, mask=tile_mask)
        w = w - lr * m / (tl.sqrt(v) + eps)
    tl.store(w_ptrs, w.to(weight_ptr.dtype.element_ty), mask=tile_mask)


def _blocks(dim: int) -> tuple[int, int, int]:
    """(rows of a tile, BLOCK_D, num_warps): whole rows, about TILE elements per program."""
    block_d = triton.next_power_of_2(dim)
    block_rows = max(1, min(MAX_TILE_ROWS, TILE // block_d))
    return block_rows, block_d, max(1, min(8, block_rows * block_d // ELEMENTS_PER_WARP))


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
    block_b, block_d, warps = _blocks(dim)
    _pool_kernel[(triton.cdiv(num_bags, block_b),)](
        weight, indices.contiguous(), offsets.contiguous(), scales if scales is not None else weight, out,
        num_bags, dim, weight.stride(0), out.stride(0),
        HAS_SCALES=scales is not None, MEAN=mode == "mean", BLOCK_B=block_b, BLOCK_D=block_d, num_warps=warps,
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
    block_u, block_d, warps = _blocks(dim)
    _sorted_backward_kernel[(triton.cdiv(unique, block_u),)](
        grad_out, ids.bags, ids.scales if ids.scales is not None else grad_out, ids.segments, ids.rows,
        weight, state1, state2, out if out is not None else grad_out,
        unique, dim, grad_out.stride(0), weight.stride(0), lr, opt.eps if opt is not None else 0.0, beta1, beta2,
        HAS_SCALES=ids.scales is not None, RULE=rule, BLOCK_U=block_u, BLOCK_D=block_d, num_warps=warps,
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
