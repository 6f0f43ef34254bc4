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

Sorting and the unique/segment bookkeeping run as torch ops, as FBGEMM does with CUB's
radix sort. The fused backward's bookkeeping (``padded_sort``) never reads a size back to the
host: arrays are sized by the N ids rather than the U unique rows, the count U stays on the
device, and the kernel's grid covers N, programs past U returning at once. A training step
thus queues its whole backward without waiting for the GPU. When the caller declares the ids
as S equal segments, each holding one table's rows (``Lookup.table_segments``), each segment
is sorted on its own (a batched sort along the last dim).

Deviation: a row that occurs very often in one batch (e.g. padding) is reduced serially by
its program, which then runs as many steps as that row has ids; FBGEMM splits such long
segments over several warps.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from ctr.kernels.embedding_bag import reference
from ctr.kernels.optim.rules import FusedOptimizer, Rule
from ctr.kernels.embedding_bag.reference import Lookup, SortedIds

RULE_CODES = {Rule.SGD: 1, Rule.ADAGRAD: 2, Rule.ROWWISE_ADAGRAD: 3, Rule.ADAM: 4}
GRAD_ONLY = 0
# A program works on a [rows, BLOCK_D] tile of about TILE elements with one warp per
# ELEMENTS_PER_WARP of them: 1,024 and 256 were fastest on average over the DLRM-like grid
# (D 64/128 x L 1/20) on an H200 (benchmarks/triton_tiles.py, docs/benchmarks/kernels.md).
TILE = 1024
ELEMENTS_PER_WARP = 256
MAX_TILE_ROWS = 128
# Ids one program sums per row before the row is cut into chunks summed by other programs.
CHUNK = 256


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
    grad_ptr, bags_ptr, scales_ptr, starts_ptr, ends_ptr, rows_ptr, count_ptr, chunk_first_ptr, partial_ptr,
    weight_ptr, state1_ptr, state2_ptr, out_ptr,
    D, stride_g, stride_w, lr, eps, beta1, beta2,
    HAS_SCALES: tl.constexpr, RULE: tl.constexpr, HAS_CHUNKS: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK_U: tl.constexpr, BLOCK_D: tl.constexpr,
):
    first = tl.program_id(0).to(tl.int64) * BLOCK_U
    num_units = tl.load(count_ptr)
    if first >= num_units:  # the grid covers an upper bound; only the first units are real
        return
    units = first + tl.arange(0, BLOCK_U)
    unit_mask = units < num_units
    starts = tl.load(starts_ptr + units, mask=unit_mask, other=0)
    counts = tl.load(ends_ptr + units, mask=unit_mask, other=0) - starts
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < D
    steps = counts
    if HAS_CHUNKS:  # a long unit sums its chunks' partial sums instead of its ids
        chunk_first = tl.load(chunk_first_ptr + units, mask=unit_mask, other=-1)
        steps = tl.where(chunk_first >= 0, (counts + CHUNK - 1) // CHUNK, counts)
    grad = tl.zeros([BLOCK_U, BLOCK_D], dtype=tl.float32)
    for step in range(0, tl.max(steps, axis=0).to(tl.int32)):  # in sorted order: deterministic
        live = step < steps
        direct = live
        if HAS_CHUNKS:
            direct = live & (chunk_first < 0)
        pos = starts + step
        bags = tl.load(bags_ptr + pos, mask=direct, other=-1).to(tl.int64)
        vals = tl.load(
            grad_ptr + bags[:, None] * stride_g + cols[None, :],
            mask=(bags >= 0)[:, None] & col_mask[None, :], other=0.0,
        ).to(tl.float32)
        if HAS_SCALES:
            vals = vals * tl.load(scales_ptr + pos, mask=direct, other=0.0)[:, None]
        if HAS_CHUNKS:
            chunk = tl.where(live & (chunk_first >= 0), chunk_first + step, -1)
            vals += tl.load(
                partial_ptr + chunk[:, None] * D + cols[None, :],
                mask=(chunk >= 0)[:, None] & col_mask[None, :], other=0.0,
            )
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


@functools.lru_cache(maxsize=None)
def _blocks(dim: int) -> tuple[int, int, int]:
    """(rows of a tile, BLOCK_D, num_warps): whole rows, about TILE elements per program."""
    block_d = triton.next_power_of_2(dim)
    block_rows = max(1, min(MAX_TILE_ROWS, TILE // block_d))
    return block_rows, block_d, max(1, min(8, block_rows * block_d // ELEMENTS_PER_WARP))


@dataclass
class PaddedIds:
    """``SortedIds`` sized by the N ids instead of the U unique rows, U kept on the device.

    Args:
        rows: int64 [N]; the first U are the unique rows, ascending.
        segments: int64 [N + 1]; ``segments[u]`` is where unit u's ids start in sorted order
            for u < U, and N from U on.
        bags, scales: as in ``SortedIds``.
        count: int64 [1], U.
        chunks: the long units' chunks (``Chunks``).
    """

    rows: Tensor
    segments: Tensor
    bags: Tensor
    scales: Tensor | None
    count: Tensor
    chunks: Chunks


@dataclass
class Chunks:
    """Units of more than CHUNK ids, cut into chunks of CHUNK consecutive ids (sorted order).

    Args:
        first: int64 [N]: unit u's first chunk, or -1 for a unit of at most CHUNK ids.
        starts, ends: int64 [C]: each chunk's positions in sorted order (C = 2N / CHUNK + 1
            bounds the count: a long unit of n ids has at most 2n / CHUNK chunks).
        count: int64 [1]: chunks in use.
    """

    first: Tensor
    starts: Tensor
    ends: Tensor
    count: Tensor


def padded_sort(lookup: Lookup) -> PaddedIds:
    """Groups ``lookup``'s ids by row without reading anything back to the host.

    With ``lookup.table_segments`` = S > 1 the ids are S equal segments whose rows lie in
    disjoint ranges, ascending from segment to segment (one table each): each segment is
    sorted on its own, which orders the whole as one sort would.
    """
    indices, count = lookup.indices, lookup.indices.numel()
    device = indices.device
    narrow = lookup.num_rows is not None and lookup.num_rows <= torch.iinfo(torch.int32).max
    keys = indices.int() if narrow else indices.long()
    segments_in = lookup.table_segments
    if segments_in > 1 and count % segments_in == 0:
        sorted_rows, local = torch.sort(keys.view(segments_in, -1), dim=1, stable=True)
        base = torch.arange(0, count, count // segments_in, device=device).unsqueeze(1)
        sorted_rows, order = sorted_rows.reshape(-1), (local + base).reshape(-1)
    else:
        sorted_rows, order = torch.sort(keys, stable=True)
    starts = torch.ones(count, dtype=torch.bool, device=device)
    torch.ne(sorted_rows[1:], sorted_rows[:-1], out=starts[1:])
    unit = torch.cumsum(starts, 0) - 1
    positions = torch.arange(count, device=device)
    segments = _scatter_starts(starts, unit, positions, count, count)
    segments = torch.cat([segments, segments.new_full((1,), count)])
    rows = sorted_rows.long().gather(0, segments[:count].clamp(max=max(count - 1, 0)))
    bags, scales = _bags_and_scales(lookup, order)
    return PaddedIds(rows, segments, bags, scales, unit[-1:] + 1, _chunks(segments, unit, positions))


def _scatter_starts(flags: Tensor, slot: Tensor, values: Tensor, size: int, fill: int) -> Tensor:
    """int64 [size]: ``values[i]`` at ``slot[i]`` where ``flags[i]``, ``fill`` elsewhere."""
    out = torch.full((size + 1,), fill, dtype=torch.int64, device=values.device)
    return out.scatter_(0, torch.where(flags, slot, size), values)[:size]  # slot ``size`` takes the rest


def _chunks(segments: Tensor, unit: Tensor, positions: Tensor) -> Chunks:
    """The chunks of the units longer than CHUNK ids (device arrays only)."""
    count = positions.numel()
    lengths = segments[1:] - segments[:-1]
    long = lengths > CHUNK
    per_unit = torch.where(long, (lengths + CHUNK - 1) // CHUNK, 0)
    upto = torch.cumsum(per_unit, 0)
    first = torch.where(long, upto - per_unit, -1)
    offset = positions - segments.gather(0, unit)
    opens = long.gather(0, unit) & (offset % CHUNK == 0)
    chunk = first.gather(0, unit) + offset // CHUNK
    capacity = 2 * count // CHUNK + 1
    chunk_starts = _scatter_starts(opens, chunk, positions, capacity, 0)
    ends = torch.minimum(positions + CHUNK, segments.gather(0, unit + 1))
    return Chunks(first, chunk_starts, _scatter_starts(opens, chunk, ends, capacity, 0), upto[-1:])


def _bags_and_scales(lookup: Lookup, order: Tensor) -> tuple[Tensor, Tensor | None]:
    """The bag of each id and its factor, both in sorted order (no host reads)."""
    if lookup.per_sample_weights is not None:
        scales = lookup.per_sample_weights.detach().float()[order]
    else:
        scales = None
    if lookup.single:
        return order, scales
    offsets = lookup.offsets
    lengths = offsets[1:] - offsets[:-1]
    bag_of_id = torch.repeat_interleave(
        torch.arange(lengths.numel(), device=offsets.device), lengths, output_size=lookup.indices.numel()
    )
    if scales is None and lookup.mode == "mean":
        scales = (1.0 / lengths.clamp(min=1).float())[bag_of_id][order]
    return bag_of_id[order], scales


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

    The kernels do not bound their loads and stores, so ids and offsets are checked here
    (``reference.check_bounds``); the backward reads the ids this forward checked.
    """
    reference.check_mode(mode, per_sample_weights)
    reference.check_bounds(indices, offsets, per_sample_weights, weight.shape[0])
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


@dataclass
class _Units:
    """What one launch reduces: units [starts, ends) of sorted ids, ``count`` of them on the
    device, a grid over ``capacity``; optionally long units read from chunk partial sums."""

    starts: Tensor
    ends: Tensor
    count: Tensor
    capacity: int
    chunk_first: Tensor | None = None
    partial: Tensor | None = None


def _launch(grad_out: Tensor, bags: Tensor, scales: Tensor | None, units: _Units, rows: Tensor, weight: Tensor,
            rule: int, out: Tensor | None, state: dict[str, Tensor] | None = None,
            opt: FusedOptimizer | None = None, lr: float = 0.0) -> None:
    """One launch of the sorted backward over ``units``."""
    dim = weight.shape[1]
    state = state or {}
    state1 = state.get("sum", state.get("exp_avg", weight))
    state2 = state.get("exp_avg_sq", weight)
    beta1, beta2 = opt.betas if opt is not None else (0.0, 0.0)
    block_u, block_d, warps = _blocks(dim)
    chunked = units.chunk_first is not None
    _sorted_backward_kernel[(triton.cdiv(units.capacity, block_u),)](
        grad_out, bags, scales if scales is not None else grad_out, units.starts, units.ends, rows, units.count,
        units.chunk_first if chunked else units.starts, units.partial if chunked else grad_out,
        weight, state1, state2, out if out is not None else grad_out,
        dim, grad_out.stride(0), weight.stride(0), lr, opt.eps if opt is not None else 0.0, beta1, beta2,
        HAS_SCALES=scales is not None, RULE=rule, HAS_CHUNKS=chunked, CHUNK=CHUNK, BLOCK_U=block_u,
        BLOCK_D=block_d, num_warps=warps,
    )


def segment_grad(grad_out: Tensor, lookup: Lookup) -> Tensor:
    """Gradient of each unique row [U, D] fp32 (for a sparse gradient tensor)."""
    ids = lookup.sorted()
    unique = ids.rows.numel()
    out = torch.empty(unique, grad_out.shape[1], dtype=torch.float32, device=grad_out.device)
    if unique:
        units = _Units(ids.segments, ids.segments[1:], ids.segments.new_full((1,), unique), unique)
        _launch(grad_out.contiguous(), ids.bags, ids.scales, units, ids.rows, grad_out, GRAD_ONLY, out)
    return out


def backward_update(grad_out: Tensor, weight: Tensor, state: dict[str, Tensor], lookup: Lookup, opt: FusedOptimizer,
                    lr: float | None = None) -> None:
    """The fused backward: reduce each unique row and apply ``opt`` to it.

    Two launches: the first sums each chunk of CHUNK ids of the rows that occur more often
    than that into a partial sum (nothing to do when none does); the second reduces every
    row, a long row from its chunks' partial sums, and applies the rule. A row's terms are
    added in sorted order either way (deterministic), and no program walks more than
    max(CHUNK, ids of the longest row / CHUNK) steps.

    Args:
        grad_out: [num_bags, D] gradient of the pooled output.
        weight: [R, D] table with contiguous rows, updated in place.
        state: ``opt.init_state(weight)``, updated in place.
        lookup: the forward's inputs.
        opt: the fused optimizer.
        lr: this step's learning rate (a schedule's); ``None``: ``opt.lr``.
    """
    if weight.stride(1) != 1:
        raise ValueError("the fused Triton backward needs a weight with contiguous rows")
    lr = opt.begin_step(state, lr)
    count = lookup.indices.numel()
    if count == 0:
        return
    ids, grad_out = padded_sort(lookup), grad_out.contiguous()
    chunks = ids.chunks
    partial = torch.empty(chunks.starts.numel(), grad_out.shape[1], dtype=torch.float32, device=grad_out.device)
    chunk_units = _Units(chunks.starts, chunks.ends, chunks.count, chunks.starts.numel())
    _launch(grad_out, ids.bags, ids.scales, chunk_units, ids.rows, grad_out, GRAD_ONLY, partial)
    row_units = _Units(ids.segments, ids.segments[1:], ids.count, count, chunks.first, partial)
    _launch(grad_out, ids.bags, ids.scales, row_units, ids.rows, weight, RULE_CODES[opt.rule], None, state, opt, lr)
