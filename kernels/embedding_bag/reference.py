"""Pure-torch table-batched embedding bag: the oracle every other backend is tested against.

All tables of a collection live in one weight buffer [R, D]; the caller has already turned
each id into a global row (``table_row_offset + id``). Bags are given by ``offsets``
(``offsets[0] == 0``, ``offsets[-1] == N``).

Besides the pooled lookup this module holds the reference of the sorted backward: ids are
sorted (stably) so that each unique row's contributions are contiguous, each row's gradient
is one segment reduction in a fixed order (deterministic), and an optimizer rule of
``fused.py`` is applied to the touched rows only. It runs on any device and is the fused
path used for CPU training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ctr.kernels import native
from ctr.kernels.embedding_bag.fused import FusedOptimizer, Rule

MODES = ("sum", "mean")
# The native single-id update groups ids with a counting sort, whose scratch and passes grow
# with the table's rows: it is used while rows <= this many times the batch's ids.
COUNTING_SORT_ROWS_PER_ID = 8


def check_mode(mode: str, per_sample_weights: Tensor | None) -> None:
    """Raises ValueError for an unknown mode or per-sample weights outside sum mode."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'sum' or 'mean', got {mode!r}")
    if per_sample_weights is not None and mode != "sum":
        raise ValueError("per_sample_weights need mode='sum'")


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


@torch.no_grad()
def apply_update(weight: Tensor, state: dict[str, Tensor], rows: Tensor, grad: Tensor, opt: FusedOptimizer, lr: float) -> None:
    """Applies ``opt`` in place to ``weight`` rows ``rows`` [U] given their gradient [U, D].

    Args:
        weight: [R, D] table (any float dtype; updated in fp32, stored rounded).
        state: the optimizer state of ``opt.init_state`` (updated in place).
        rows: int64 [U] unique rows.
        grad: fp32 [U, D].
        opt: the rule and its hyper-parameters.
        lr: this step's learning rate from ``opt.begin_step``.
    """
    w = weight.index_select(0, rows).float()
    if opt.rule is Rule.SGD:
        w.add_(grad, alpha=-lr)
    elif opt.rule is Rule.ADAGRAD:
        acc = state["sum"].index_select(0, rows).addcmul_(grad, grad)
        state["sum"].index_copy_(0, rows, acc)
        w.addcdiv_(grad, acc.sqrt_().add_(opt.eps), value=-lr)
    elif opt.rule is Rule.ROWWISE_ADAGRAD:
        acc = state["sum"].index_select(0, rows).add_(grad.square().mean(1))
        state["sum"].index_copy_(0, rows, acc)
        w.addcmul_(grad, (lr / acc.sqrt_().add_(opt.eps)).unsqueeze(1), value=-1.0)
    else:
        beta1, beta2 = opt.betas
        m = state["exp_avg"].index_select(0, rows).lerp_(grad, 1 - beta1)
        v = state["exp_avg_sq"].index_select(0, rows).lerp_(grad.square(), 1 - beta2)
        state["exp_avg"].index_copy_(0, rows, m)
        state["exp_avg_sq"].index_copy_(0, rows, v)
        w.addcdiv_(m, v.sqrt_().add_(opt.eps), value=-lr)
    weight.index_copy_(0, rows, w.to(weight.dtype))


def counting_sort_fits(num_rows: int, num_ids: int) -> bool:
    """Whether the native single-id kernels group ``num_ids`` ids of a ``num_rows``-row table
    with a counting sort (scratch and passes grow with the rows, so only for small tables)."""
    return num_rows <= COUNTING_SORT_ROWS_PER_ID * num_ids


def backward_update(
    grad_out: Tensor,
    weight: Tensor,
    state: dict[str, Tensor],
    lookup: Lookup,
    opt: FusedOptimizer,
) -> None:
    """The fused backward: one segment reduction per unique row, then ``opt`` on those rows.

    Args:
        grad_out: [num_bags, D] or [G, n, D] gradient of the pooled output.
        weight: [R, D] table, updated in place.
        state: optimizer state, updated in place.
        lookup: the forward's inputs.
        opt: the fused optimizer.
    """
    lr = opt.begin_step(state)
    if opt.rule is Rule.ADAGRAD and native.usable(weight, state["sum"], rows=(grad_out,)):
        small_table = counting_sort_fits(weight.shape[0], lookup.indices.numel())
        if lookup.single and lookup.per_sample_weights is None and small_table:
            _native_adagrad_single(grad_out, weight, state["sum"], lookup, opt, lr)
        else:
            _native_adagrad(grad_out, weight, state["sum"], lookup.sorted(), opt, lr)
        return
    apply_update(weight, state, lookup.sorted().rows, segment_grad(grad_out, lookup), opt, lr)


def _native_adagrad(grad_out: Tensor, weight: Tensor, state_sum: Tensor, ids: SortedIds, opt: FusedOptimizer,
                    lr: float) -> None:
    """``segment_grad`` and the Adagrad rule of ``apply_update`` in one pass over the touched
    rows (C kernel ``adagrad_rows``; fp32 CPU tables); the gradient is read in place."""
    scales = None if ids.scales is None else ids.scales.contiguous()
    status = native.library().adagrad_rows(
        native.pointer(ids.rows), native.pointer(ids.segments), native.pointer(ids.bags.contiguous()),
        native.pointer(scales), ids.rows.numel(), native.pointer(grad_out), *_bag_layout(grad_out),
        weight.shape[1], native.pointer(weight), native.pointer(state_sum), lr, opt.eps, torch.get_num_threads(),
    )
    native.check(status, "adagrad_rows")


def _native_adagrad_single(grad_out: Tensor, weight: Tensor, state_sum: Tensor, lookup: Lookup, opt: FusedOptimizer,
                           lr: float) -> None:
    """The Adagrad update of single-id bags, grouped by row with a counting sort inside the C
    kernel ``adagrad_single`` (no torch sort); the gradient is read in place."""
    rows = lookup.indices.long().contiguous()
    status = native.library().adagrad_single(
        native.pointer(rows), rows.numel(), weight.shape[0], native.pointer(grad_out), *_bag_layout(grad_out),
        weight.shape[1], native.pointer(weight), native.pointer(state_sum), lr, opt.eps, torch.get_num_threads(),
    )
    native.check(status, "adagrad_single")


def single_id_row_grads(grad_out: Tensor, rows: Tensor, num_rows: int) -> tuple[Tensor, Tensor]:
    """Each distinct row's gradient for bags of one id each (bag i holds row ``rows[i]``), the
    ids grouped by a counting sort in the C kernel ``segment_sum_single`` and each row's terms
    summed in id order.

    Args:
        grad_out: [N, D] or [G, n, D] fp32 gradient of the pooled bags, unit last stride.
        rows: int64 [N] row of each bag's id, in [0, num_rows).
        num_rows: rows of the table.

    Returns:
        (distinct rows int64 [U], ascending; their gradients fp32 [U, D]).
    """
    rows = rows.long().contiguous()
    unique, sums = rows.new_empty(rows.numel()), grad_out.new_empty(rows.numel(), grad_out.shape[-1])
    count = torch.zeros(1, dtype=torch.int64)
    status = native.library().segment_sum_single(
        native.pointer(rows), rows.numel(), num_rows, native.pointer(grad_out), *_bag_layout(grad_out),
        grad_out.shape[-1], native.pointer(unique), native.pointer(sums), native.pointer(count),
        torch.get_num_threads(),
    )
    native.check(status, "segment_sum_single")
    found = int(count)
    return unique[:found].clone(), sums[:found].clone()  # not views that keep all N rows alive


def _bag_layout(grad_out: Tensor) -> tuple[int, int, int]:
    """(group, group stride, item stride) in floats: bag ``i`` of ``grad_out`` ([N, D], or
    [G, n, D] with bag ``i`` at ``[i // n, i % n]``) starts ``(i // group) * group stride +
    (i % group) * item stride`` floats after its first element."""
    if grad_out.dim() == 2:
        return max(1, grad_out.shape[0]), 0, grad_out.stride(0)
    return grad_out.shape[1], grad_out.stride(0), grad_out.stride(1)


def per_sample_weight_grad(weight: Tensor, indices: Tensor, offsets: Tensor, grad_out: Tensor) -> Tensor:
    """Gradient of sum-pooled output w.r.t. each id's weight: ⟨W[row], grad_out[bag]⟩ [N]."""
    lengths = offsets[1:] - offsets[:-1]
    bag_of_id = torch.repeat_interleave(
        torch.arange(lengths.numel(), device=indices.device), lengths, output_size=indices.numel()
    )
    rows = weight.detach().index_select(0, indices.long()).float()
    return (rows * grad_out.float().index_select(0, bag_of_id)).sum(1)
