"""Methods whose storage is one table buffer looked up through the embedding-bag kernel."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ctr.embeddings.bags import Bags, IdGrid
from ctr.embeddings.base import EmbeddingMethod
from ctr.kernels.embedding_bag import (
    Backend, FusedOptimizer, bag_rows, check_fused, embedding_bag, fused_embedding_bag, grouped, resolve_backend,
    single_id_row_grads, single_ids_fit,
)
from ctr.recipe import EmbeddingConfig
from ctr.schema import Schema

STATE_PREFIX = "fused_"


class TableMethod(EmbeddingMethod):
    """A method that stores rows in one weight buffer [R, D] shared by all its tables.

    Subclasses choose ``R`` (``storage_rows``) and the id transform (``rows_of``), which maps
    each (feature, id) to a row of the buffer. Every read of the buffer goes through
    ``lookup`` (``ctr.kernels``, one table-batched call per batch; Triton by default on
    CUDA). By default the buffer is a parameter with sparse gradients (only the rows a batch
    touched); after ``use_fused_update`` it is a buffer that the kernel's backward updates in
    place, with the optimizer state kept in buffers ``fused_<name>`` (saved in checkpoints).
    """

    fusable = True
    reads_backend = True

    def __init__(self, schema: Schema, config: EmbeddingConfig, storage_rows: int, dim: int | None = None):
        super().__init__(schema, config)
        self.weight = nn.Parameter(torch.empty(storage_rows, dim or config.dim))
        nn.init.normal_(self.weight, std=config.init_std)
        self._backend: tuple[torch.device, Backend] | None = None
        self.fused: FusedOptimizer | None = None
        self._fused_lr: Callable[[], float] | None = None
        self._state_names: tuple[str, ...] = ()
        self._offsets: Tensor | None = None

    def rows_of(self, feature: Tensor, ids: Tensor) -> Tensor:
        """Row of the buffer for each id of feature ``feature`` (the id transform): ids [N]
        with features [N], or a grid of ids [B, F] with features [F] (they broadcast); the
        rows have the ids' shape."""
        raise NotImplementedError

    def embed_bags(self, bags: Bags) -> Tensor:
        rows = self.rows_of(bags.feature, bags.ids).reshape(-1)
        return self.lookup(rows, bags.offsets, bags.weights, bags.equal_groups())

    def embed_grid(self, grid: IdGrid) -> Tensor:
        """One table-batched lookup of the [B, F] rows, sample by sample: its output is the
        pooled [B, F, D] itself (no transposed copy into the model's field layout)."""
        b, f = grid.ids.shape
        rows = self.rows_of(grid.features, grid.ids).reshape(-1)
        offsets = self._single_offsets(rows.numel(), rows.device)
        return self.lookup(rows, offsets, None, groups=b, single=True).view(b, f, -1)

    def lookup(self, rows: Tensor, offsets: Tensor, weights: Tensor | None, groups: int = 1,
               single: bool = False) -> Tensor:
        """Weighted sum of buffer rows per bag [num_bags, D] via the kernel dispatch, or
        [groups, num_bags / groups, D] for ``groups`` > 1 (a view whose strided gradient the
        backward reads in place); ``single``: every bag holds one id, ``offsets`` being
        ``_single_offsets`` (the fused kernel does not check them; see ``fused_embedding_bag``).

        In fused mode a training-mode lookup's backward updates the touched rows, so a
        method must look its table up once per training step. Otherwise, when training with
        the torch backend, the table's gradient gets one entry per distinct row, so the sparse
        optimizer has nothing left to merge: single-id bags gather their rows and a native
        counting sort sums each row's gradient (``single_id_row_grads``); other
        bags gather the batch's distinct rows once and pool that block.
        """
        backend = self.backend()
        if self.fused is None:
            if backend is Backend.TORCH and self.weight.requires_grad and torch.is_grad_enabled():
                if single and weights is None and single_ids_fit(self.weight, rows.numel()):
                    return _GatheredRows.apply(self.weight, rows, False, groups)
                unique, inverse = torch.unique(rows, return_inverse=True)
                block = _GatheredRows.apply(self.weight, unique, True, 1)  # [U, D]
                return _BagOfBlock.apply(block, inverse, offsets, weights, groups)
            pooled = embedding_bag(self.weight, rows, offsets, weights, backend=backend)
            return grouped(pooled, groups)
        state = {name: getattr(self, STATE_PREFIX + name) for name in self._state_names}
        lr = self._fused_lr() if self._fused_lr is not None else None
        return fused_embedding_bag(
            self.weight, state, rows, offsets, weights, "sum", self.fused, backend, update=self.training, groups=groups,
            single=single, lr=lr, check_offsets=False,
        )

    def backend(self) -> Backend:
        """The kernel backend for the buffer's device, resolved once per device."""
        device = self.weight.device
        if self._backend is None or self._backend[0] != device:
            self._backend = (device, resolve_backend(self.config.backend, device))
        return self._backend[1]

    def embed_ids(self, feature: Tensor, ids: Tensor) -> Tensor:
        """One row per id [N, D], as bags of length 1 through ``lookup``."""
        rows = self.rows_of(feature, ids)
        return self.lookup(rows, self._single_offsets(rows.numel(), rows.device), None)

    def _single_offsets(self, count: int, device: torch.device) -> Tensor:
        """``0, 1, ..., count``: bags of one id each (kept for the last size and device asked,
        a batch's usual size; made anew while ``torch.export`` traces, which warns of a tensor
        attribute assigned in the trace, and whose ``count`` is symbolic)."""
        if torch.compiler.is_exporting():
            return torch.arange(count + 1, device=device)
        if self._offsets is None or self._offsets.numel() != count + 1 or self._offsets.device != device:
            self._offsets = torch.arange(count + 1, device=device)
        return self._offsets

    def use_fused_update(self, optimizer: FusedOptimizer) -> None:
        """Updates the table inside the lookup's backward with ``optimizer`` from now on.

        ``weight`` becomes a buffer (the dense optimizer never sees it) and the optimizer
        state is registered as buffers ``fused_<name>``, so checkpoints carry it and a
        resumed run continues the same optimizer trajectory. Its lr is ``optimizer.lr`` until
        ``follow_fused_lr`` gives a schedule's.
        """
        check_fused(self.config.backend, optimizer)
        weight = self.weight.detach()
        del self.weight
        self.register_buffer("weight", weight)
        state = optimizer.init_state(weight)
        for name, tensor in state.items():
            self.register_buffer(STATE_PREFIX + name, tensor)
        self._state_names = tuple(state)
        self.fused = optimizer

    def follow_fused_lr(self, lr: Callable[[], float]) -> None:
        """Reads the fused update's learning rate from ``lr`` at every training lookup from now
        on (e.g. ``FusedLR.lr``, which schedules set); until then the update uses ``fused.lr``."""
        if self.fused is None:
            raise RuntimeError("follow_fused_lr: call use_fused_update first")
        self._fused_lr = lr

    def memory_bytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [] if self.fused is not None else [self.weight]


class _GatheredRows(torch.autograd.Function):
    """``weight[rows]`` [N, D] whose gradient is a sparse tensor with one entry per distinct row.

    ``distinct``: ``rows`` are sorted and distinct, so the output's gradient rows are the
    entries; else rows repeat (one per single-id bag) and the native counting-sort kernel sums
    each row's gradient (no torch sort or scatter; fp32 CPU ``weight``), reading a grouped
    output's strided gradient in place.

    Args: weight [R, D]; rows int64 [N]; distinct: as above; groups: as in
    ``TableMethod.lookup`` (1 for distinct rows). Returns [N, D] or [groups, N / groups, D].
    """

    @staticmethod
    def forward(ctx, weight: Tensor, rows: Tensor, distinct: bool, groups: int) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(rows)
        ctx.shape, ctx.distinct = weight.shape, distinct
        return grouped(weight.index_select(0, rows), groups)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:  # noqa: ANN001
        (rows,) = ctx.saved_tensors
        if not ctx.distinct:
            rows, grad = single_id_row_grads(grad if grad.stride(-1) == 1 else grad.contiguous(), rows, ctx.shape[0])
        sparse = torch.sparse_coo_tensor(rows.unsqueeze(0), grad, ctx.shape, is_coalesced=True, check_invariants=False)
        return sparse, None, None, None


class _BagOfBlock(torch.autograd.Function):
    """Weighted sum per bag of ``block`` rows (the reference bag), with a backward that
    gathers each id's output gradient and adds it into its row: two linear passes instead of
    the sort inside torch's dense embedding-bag backward.

    Args: block [U, D]; index [N] rows of block; offsets [num_bags + 1]; weights [N] or None;
    groups: as in ``TableMethod.lookup``.
    Returns [num_bags, D], or [groups, num_bags / groups, D].
    """

    @staticmethod
    def forward(ctx, block: Tensor, index: Tensor, offsets: Tensor, weights: Tensor | None, groups: int) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(block, index, offsets, weights)
        pooled = embedding_bag(block.detach(), index, offsets, weights)
        return grouped(pooled, groups)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None, Tensor | None, None]:  # noqa: ANN001
        block, index, offsets, weights = ctx.saved_tensors
        lengths = offsets[1:] - offsets[:-1]
        bag = torch.repeat_interleave(torch.arange(lengths.numel(), device=grad.device), lengths, output_size=index.numel())
        table, bag_row = bag_rows(grad, bag)
        grad_ids = table.index_select(0, bag_row)  # [N, D]
        grad_weights = None
        if weights is not None and ctx.needs_input_grad[3]:
            grad_weights = (grad_ids * block.index_select(0, index)).sum(1).to(weights.dtype)
        if weights is not None:
            grad_ids = grad_ids * weights.unsqueeze(1).to(grad_ids.dtype)
        grad_block = torch.zeros_like(block).index_add_(0, index, grad_ids)
        return grad_block, None, None, grad_weights, None
