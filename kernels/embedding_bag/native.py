"""The embedding bag's CPU backend: the torch reference, with C kernels (``../optim/rows.c``)
where they apply.

- Fused Adagrad on fp32 CPU tables: each unique row's gradient summed and the rule applied
  in one pass (``adagrad_rows``); for bags of one id each in a small table, the ids grouped
  by a counting sort inside the kernel (``adagrad_single``) instead of a torch sort.
- The sparse-gradient path of single-id batches: each distinct row's gradient summed by a
  counting sort (``segment_sum_single``), for an outside sparse optimizer.

Everything else (other rules, other dtypes, no native library) is ``reference.py``'s.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ctr.kernels import native
from ctr.kernels.embedding_bag import reference
from ctr.kernels.embedding_bag.reference import READS_GROUPED, Lookup, SortedIds, forward, segment_grad
from ctr.kernels.optim.rules import FusedOptimizer, Rule

__all__ = ["READS_GROUPED", "backward_update", "forward", "segment_grad", "single_id_row_grads", "single_ids_fit"]

# The counting sort's scratch and passes grow with the table's rows: it is used while rows <=
# this many times the batch's ids.
COUNTING_SORT_ROWS_PER_ID = 8


def counting_sort_fits(num_rows: int, num_ids: int) -> bool:
    """Whether the single-id kernels group ``num_ids`` ids of a ``num_rows``-row table with a
    counting sort (scratch and passes grow with the rows, so only for small tables)."""
    return num_rows <= COUNTING_SORT_ROWS_PER_ID * num_ids


def single_ids_fit(weight: Tensor, num_ids: int) -> bool:
    """Whether ``single_id_row_grads`` runs natively for ``num_ids`` single-id bags of ``weight``."""
    return native.usable(weight) and counting_sort_fits(weight.shape[0], num_ids)


def backward_update(grad_out: Tensor, weight: Tensor, state: dict[str, Tensor], lookup: Lookup,
                    opt: FusedOptimizer, lr: float | None = None) -> None:
    """``reference.backward_update``, with fused Adagrad in C on fp32 CPU tables."""
    if not (opt.rule is Rule.ADAGRAD and native.usable(weight, state["sum"], rows=(grad_out,))):
        reference.backward_update(grad_out, weight, state, lookup, opt, lr)
        return
    lr = opt.begin_step(state, lr)
    small_table = counting_sort_fits(weight.shape[0], lookup.indices.numel())
    if lookup.single and lookup.per_sample_weights is None and small_table:
        _adagrad_single(grad_out, weight, state["sum"], lookup, opt, lr)
    else:
        _adagrad_rows(grad_out, weight, state["sum"], lookup.sorted(), opt, lr)


def _adagrad_rows(grad_out: Tensor, weight: Tensor, state_sum: Tensor, ids: SortedIds, opt: FusedOptimizer,
                  lr: float) -> None:
    """``segment_grad`` and the Adagrad rule in one pass over the touched rows (``adagrad_rows``);
    the gradient is read in place."""
    scales = None if ids.scales is None else ids.scales.contiguous()
    status = native.library().adagrad_rows(
        native.pointer(ids.rows), native.pointer(ids.segments), native.pointer(ids.bags.contiguous()),
        native.pointer(scales), ids.rows.numel(), native.pointer(grad_out), *_bag_layout(grad_out),
        weight.shape[1], native.pointer(weight), native.pointer(state_sum), lr, opt.eps, torch.get_num_threads(),
    )
    native.check(status, "adagrad_rows")


def _adagrad_single(grad_out: Tensor, weight: Tensor, state_sum: Tensor, lookup: Lookup, opt: FusedOptimizer,
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
    summed in id order (check ``single_ids_fit`` first).

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
