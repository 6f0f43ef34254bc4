"""Pure-torch table-batched embedding bag: the oracle every other backend is tested against.

All tables of a collection live in one weight buffer [R, D]; the caller has already turned
each id into a global row (``table_row_offset + id``). Bags are given by ``offsets``
(``offsets[0] == 0``, ``offsets[-1] == N``).

Besides the pooled lookup this module holds the reference of the sorted backward: ids are
sorted (stably) so that each unique row's contributions are contiguous, each row's gradient
is one segment reduction in a fixed order (deterministic), and an optimizer rule of
``ctr.kernels.optim`` is applied to the touched rows only. It runs on any device; the CPU
backend (``native.py``) replaces parts of it with C kernels where they apply.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ctr.kernels.optim.reference import apply_rows
from ctr.kernels.optim.rules import FusedOptimizer

MODES = ("sum", "mean")
READS_GROUPED = True  # the backward reads a grouped [G, n, D] gradient in place (``bag_rows``)


def check_mode(mode: str, per_sample_weights: Tensor | None) -> None:
    """Raises ValueError for an unknown mode or per-sample weights outside sum mode."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'sum' or 'mean', got {mode!r}")
    if per_sample_weights is not None and mode != "sum":
        raise ValueError("per_sample_weights need mode='sum'")


def check_bounds(indices: Tensor, offsets: Tensor, per_sample_weights: Tensor | None, num_rows: int) -> None:
    """Checks what a kernel without bounds checks (Triton) would otherwise read or write past
    its buffers with: the bags (``check_bags``) and ids in [0, ``num_rows``), asserted on
    their device as ``check_bags`` asserts the offsets."""
    check_bags(indices, offsets, per_sample_weights)
    if indices.numel():
        low, high = torch.aminmax(indices)
        torch._assert_async((low >= 0) & (high < num_rows), f"embedding_bag: ids must lie in [0, {num_rows})")


def check_bags(indices: Tensor, offsets: Tensor, per_sample_weights: Tensor | None) -> None:
    """Checks the bags' layout: integer ids [N] and ``offsets`` [num_bags + 1] from 0, never
    decreasing, up to N, and one per-sample weight per id. Dtypes and shapes raise
    ValueError; the offsets' values are asserted on their device without waiting for it (a
    RuntimeError on the CPU, a device-side assert on a GPU)."""
    if not (_integral(indices) and _integral(offsets)):
        raise ValueError(f"ids and offsets must be integer tensors, got {indices.dtype} and {offsets.dtype}")
    if indices.dim() != 1:
        raise ValueError(f"ids must be 1-D [N], got shape {tuple(indices.shape)}")
    if offsets.dim() != 1 or offsets.numel() == 0:
        raise ValueError(f"offsets must be 1-D [num_bags + 1], got shape {tuple(offsets.shape)}")
    if per_sample_weights is not None and per_sample_weights.shape != indices.shape:
        raise ValueError(f"per_sample_weights: {tuple(per_sample_weights.shape)} for ids {tuple(indices.shape)}")
    count = indices.numel()
    end = count if isinstance(count, int) else "the number of ids"  # a symbol while torch.export traces
    ends = (offsets[0] == 0) & (offsets[-1] == count) & (offsets.diff() >= 0).all()
    torch._assert_async(ends, f"embedding_bag: offsets must start at 0, never decrease and end at {end}")


def check_single(indices: Tensor, offsets: Tensor) -> None:
    """Checks that ``offsets`` is ``0, 1, ..., N``, bags of one id each (what a caller's
    ``single`` declares, and the backward then reads bag i's gradient for id i): the size
    raises ValueError, the values are asserted on their device without waiting for it."""
    said = "single: every bag must hold one id (offsets 0, 1, ..., N)"
    if offsets.shape != (indices.numel() + 1,):
        raise ValueError(f"{said}, got offsets {tuple(offsets.shape)} for {indices.numel()} ids")
    torch._assert_async((offsets.diff() == 1).all(), said)


def _integral(tensor: Tensor) -> bool:
    """Whether ``tensor`` holds integers (not floats, complex numbers or booleans)."""
    return not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)


def embedding_bag(
    weight: Tensor,
    indices: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None = None,
    mode: str = "sum",
    sparse: bool = True,
) -> Tensor:
    """Pools rows of ``weight`` over each bag.

    Args:
        weight: [R, D] rows of every table, one buffer.
        indices: int64 [N] global row of each id.
        offsets: int64 [num_bags + 1] bag boundaries into ``indices``.
        per_sample_weights: optional [N] weight of each id (sum mode only).
        mode: ``sum`` or ``mean``; an empty bag pools to zeros.
        sparse: give ``weight`` a sparse gradient (only the touched rows).

    Returns:
        [num_bags, D] in ``weight``'s dtype, accumulated in fp32.
    """
    check_mode(mode, per_sample_weights)
    # torch pools bool ids as rows 0/1, drops ids past an end short of N and words a decrease as an index error
    check_bags(indices, offsets, per_sample_weights)
    compute = weight if weight.dtype == torch.float32 else weight.float()
    psw = None if per_sample_weights is None else per_sample_weights.to(compute.dtype)
    pooled = F.embedding_bag(
        indices,
        compute,
        offsets,
        mode=mode,
        sparse=sparse and weight.requires_grad,
        per_sample_weights=psw,
        include_last_offset=True,
    )
    return pooled.to(weight.dtype)


def forward(weight: Tensor, indices: Tensor, offsets: Tensor, per_sample_weights: Tensor | None, mode: str) -> Tensor:
    """The pooled lookup without autograd (the forward of the fused path): [num_bags, D]."""
    with torch.no_grad():
        psw = None if per_sample_weights is None else per_sample_weights.detach()
        return embedding_bag(weight.detach(), indices, offsets, psw, mode, sparse=False)


def grouped(pooled: Tensor, groups: int) -> Tensor:
    """Pooled bags [num_bags, D] as ``groups`` equal groups [groups, num_bags / groups, D]
    (a view; unchanged for one group)."""
    return pooled if groups == 1 else pooled.view(groups, pooled.shape[0] // groups, pooled.shape[1])


@dataclass
class SortedIds:
    """A batch's ids grouped by row for the backward.

    Args:
        rows: int64 [U] unique rows, ascending.
        segments: int64 [U + 1] boundaries of each row's ids in sorted order.
        bags: int64 [N] bag of each id, in sorted order.
        scales: fp32 [N] factor of each id in sorted order (per-sample weight, or 1/len of
            its bag in mean mode); ``None`` when every factor is 1.
    """

    rows: Tensor
    segments: Tensor
    bags: Tensor
    scales: Tensor | None


@dataclass
class Lookup:
    """The inputs of one pooled lookup, kept for its backward.

    Args:
        indices: [N] global rows.
        offsets: int64 [num_bags + 1].
        per_sample_weights: optional [N].
        mode: ``sum`` or ``mean``.
        num_rows: rows of the table (``None``: unknown); below 2³¹ the sort runs on int32
            keys, about a third faster than on int64.
        single: every bag holds exactly one id (``offsets`` is ``0, 1, ..., N``), so the sort
            need not check the lengths.
        table_segments: S > 1 declares the ids as S equal segments, one per table, whose rows
            lie in disjoint ranges ascending from segment to segment; a backend may then sort
            each segment on its own (the Triton backward does).
    """

    indices: Tensor
    offsets: Tensor
    per_sample_weights: Tensor | None
    mode: str
    num_rows: int | None = None
    single: bool = False
    table_segments: int = 1
    _sorted: SortedIds | None = None

    def sorted(self) -> SortedIds:
        """The ids grouped by row (computed once)."""
        if self._sorted is None:
            self._sorted = sort_ids(
                self.indices, self.offsets, self.per_sample_weights, self.mode, self.num_rows, self.single
            )
        return self._sorted


def sort_ids(
    indices: Tensor, offsets: Tensor, per_sample_weights: Tensor | None, mode: str, num_rows: int | None = None,
    single: bool = False,
) -> SortedIds:
    """Stable sort of ids by row: the grouping every sorted backward reduces over (``single``:
    as in ``Lookup``)."""
    count = indices.numel()
    lengths = None if single else offsets[1:] - offsets[:-1]
    one_per_bag = single or (count == lengths.numel() and bool((lengths == 1).all()))  # id i is in bag i
    bag_of_id = None
    if not one_per_bag:
        bag_of_id = torch.repeat_interleave(
            torch.arange(lengths.numel(), device=indices.device), lengths, output_size=count
        )
    narrow = num_rows is not None and num_rows <= torch.iinfo(torch.int32).max
    sorted_rows, order = torch.sort(indices.int() if narrow else indices.long(), stable=True)
    rows, counts = torch.unique_consecutive(sorted_rows, return_counts=True)
    rows = rows.long()
    segments = torch.zeros(rows.numel() + 1, dtype=torch.int64, device=indices.device)
    torch.cumsum(counts, 0, out=segments[1:])
    scales = None
    if per_sample_weights is not None:
        scales = per_sample_weights.detach().float()[order]
    elif mode == "mean" and not one_per_bag:
        scales = (1.0 / lengths.clamp(min=1).float())[bag_of_id][order]
    return SortedIds(rows, segments, order if one_per_bag else bag_of_id[order], scales)


def bag_rows(grad_out: Tensor, bags: Tensor) -> tuple[Tensor, Tensor]:
    """A pooled output's gradient as a table [M, D] plus the row of each of ``bags`` in it.

    A 2-D gradient [num_bags, D] is its own table. A 3-D gradient [G, n, D] (bag ``i`` at
    ``[i // n, i % n]``) whose rows are whole D-float rows of its storage, as when the output
    was transposed and concatenated with other fields downstream, is read in place through its
    storage: no copy of the gradient into bag order.

    Args:
        grad_out: [num_bags, D] or [G, n, D].
        bags: int64 [K] bag indices.

    Returns:
        (table [M, D] with unit row stride, rows int64 [K]).
    """
    if grad_out.dim() == 2:
        return grad_out.contiguous(), bags
    groups, n, dim = grad_out.shape
    group_stride, bag_stride, unit = grad_out.stride()
    if unit != 1 or group_stride % dim or bag_stride % dim:
        return grad_out.reshape(-1, dim), bags
    group_step, bag_step = group_stride // dim, bag_stride // dim
    extent = (groups - 1) * group_step + (n - 1) * bag_step + 1
    table = grad_out.as_strided((extent, dim), (dim, 1))
    return table, (bags // n) * group_step + (bags % n) * bag_step


def segment_grad(grad_out: Tensor, lookup: Lookup) -> Tensor:
    """Gradient of each unique row, one ordered segment sum per row.

    The reduction is itself an embedding bag with the roles swapped: the "table" is
    ``grad_out``, each unique row is a "bag" whose ids are the bags it occurs in (sorted
    order) weighted by their scales. This gathers and sums in one pass, without an [N, D]
    temporary, each row's terms in a fixed order.

    Args:
        grad_out: [num_bags, D] gradient of the pooled output, or [G, n, D] (see ``bag_rows``).
        lookup: the forward's inputs.

    Returns:
        fp32 [U, D], row ``i`` being the gradient of ``lookup.sorted().rows[i]``.
    """
    ids = lookup.sorted()
    table, bags = bag_rows(grad_out, ids.bags)
    return F.embedding_bag(
        bags, table.float(), ids.segments, mode="sum", per_sample_weights=ids.scales, include_last_offset=True
    )


def backward_update(
    grad_out: Tensor,
    weight: Tensor,
    state: dict[str, Tensor],
    lookup: Lookup,
    opt: FusedOptimizer,
    lr: float | None = None,
) -> None:
    """The fused backward: one segment reduction per unique row, then ``opt`` on those rows.

    Args:
        grad_out: [num_bags, D] or [G, n, D] gradient of the pooled output.
        weight: [R, D] table, updated in place.
        state: optimizer state, updated in place.
        lookup: the forward's inputs.
        opt: the fused optimizer.
        lr: this step's learning rate (a schedule's); ``None``: ``opt.lr``.
    """
    lr = opt.begin_step(state, lr)
    apply_rows(weight, state, lookup.sorted().rows, segment_grad(grad_out, lookup), opt, lr)


def per_sample_weight_grad(weight: Tensor, indices: Tensor, offsets: Tensor, grad_out: Tensor) -> Tensor:
    """Gradient of sum-pooled output w.r.t. each id's weight: ⟨W[row], grad_out[bag]⟩ [N]."""
    lengths = offsets[1:] - offsets[:-1]
    bag_of_id = torch.repeat_interleave(
        torch.arange(lengths.numel(), device=indices.device), lengths, output_size=indices.numel()
    )
    rows = weight.detach().index_select(0, indices.long()).float()
    return (rows * grad_out.float().index_select(0, bag_of_id)).sum(1)
