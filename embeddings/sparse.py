"""The one stored format of pruned tables: a bitmap or CSR, whichever is smaller.

Every pruning method (``deeplight``, ``pep``, ``dnis``, ``autosrh``, ``optembed``) counts and
stores its kept entries through ``SparseRows``, so the same rule sizes them all:

- bitmap: the kept values (fp32) + one bit per entry, [R, ⌈D/8⌉] bytes;
- CSR: the kept values (fp32) + a column per value (uint8; int16 past D = 256) + R + 1 row
  pointers (int32, int64 past 2³¹ values).

An id's entries are found from the stored structure; the per-row offsets of the bitmap
format are rebuilt from it at load time and not counted.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctr.batch import JaggedFeatures
from ctr.embeddings.base import EmbeddingMethod
from ctr.embeddings.budget import FP32_BYTES, BudgetUnreachableError, budget_bytes, full_bytes, largest_fitting
from ctr.embeddings.stages import MultiStageMixin, StagedConfig
from ctr.embeddings.storage import pack_bits, table_starts, unpack_bits
from ctr.embeddings.types import FeatureEmbeddings
from ctr.recipe import EmbeddingConfig
from ctr.schema import Schema

COLUMN_TYPES = {1: torch.uint8, 2: torch.int16, 4: torch.int32}  # a CSR column's bytes → its dtype


def pointer_bytes(nnz: int) -> int:
    return 4 if nnz < 2**31 else 8


def column_bytes(dim: int) -> int:
    """Bytes of a CSR column index of an [R, dim] table: uint8 up to D = 256, int16 up to
    2¹⁵, else int32."""
    return 1 if dim <= 256 else 2 if dim <= 2**15 else 4


def format_bytes(rows: int, dim: int, nnz: int) -> tuple[Literal["bitmap", "csr"], int]:
    """The smaller stored format of ``nnz`` kept entries of an [rows, dim] table, and its bytes."""
    bitmap = nnz * FP32_BYTES + rows * ((dim + 7) // 8)
    csr = nnz * (FP32_BYTES + column_bytes(dim)) + (rows + 1) * pointer_bytes(nnz)
    return ("bitmap", bitmap) if bitmap <= csr else ("csr", csr)


def kept_for_budget(rows: int, dim: int, limit: float) -> int | None:
    """The most kept entries whose stored format fits ``limit`` bytes; None when not even one."""
    return largest_fitting(1, rows * dim, lambda nnz: format_bytes(rows, dim, nnz)[1], limit)


def pruned_size(method: str, config: EmbeddingConfig, tables: dict[str, int]) -> tuple[int, float]:
    """(kept entries, target sparsity S = 1 − kept / (R·D)) of a pruning method whose stored
    format fits the budget; a ``BudgetUnreachableError`` when not even one entry fits."""
    rows = sum(tables.values())
    kept = kept_for_budget(rows, config.dim, budget_bytes(config, method, tables))
    if kept is None:
        least = format_bytes(rows, config.dim, 1)[1] / full_bytes(tables, config.dim)
        raise BudgetUnreachableError(method, config.budget, least, "the sparse format's index alone needs more")
    return kept, 1 - kept / (rows * config.dim)


class SparseRows(nn.Module):
    """The kept entries of a table [R, D] in its smaller format; the values stay trainable.

    Args:
        dense: the table [R, D] whose kept entries become ``values`` (row-major order).
        mask: bool [R, D], the kept entries.
    """

    def __init__(self, dense: Tensor, mask: Tensor):
        super().__init__()
        rows, dim = mask.shape
        nnz = int(mask.sum())
        self.shape = (rows, dim)
        self.format, self.stored_bytes = format_bytes(rows, dim, nnz)
        self.values = nn.Parameter(dense.detach()[mask].clone().unsqueeze(1))  # [nnz, 1]
        counts = mask.sum(1)
        pointers = torch.zeros(rows + 1, dtype=torch.int64, device=mask.device)
        torch.cumsum(counts, 0, out=pointers[1:])
        if self.format == "bitmap":
            self.register_buffer("bits", pack_bits(mask))
            self.register_buffer("row_ptr", pointers, persistent=False)
        else:
            dtype = torch.int32 if pointer_bytes(nnz) == 4 else torch.int64
            self.register_buffer("columns", mask.nonzero()[:, 1].to(COLUMN_TYPES[column_bytes(dim)]))
            self.register_buffer("row_ptr", pointers.to(dtype))
        self._register_load_state_dict_pre_hook(self._rebuild_pointers)

    def _rebuild_pointers(self, state: dict, prefix: str, *args: object) -> None:
        """Bitmap: the row offsets follow from the loaded bits."""
        if self.format == "bitmap" and prefix + "bits" in state:
            counts = unpack_bits(state[prefix + "bits"], self.shape[1]).sum(1)
            self.row_ptr.zero_()
            torch.cumsum(counts, 0, out=self.row_ptr[1:])

    def mask_of(self, rows: Tensor) -> Tensor:
        """The kept entries [N, D] (bool) of ``rows`` [N]."""
        if self.format == "bitmap":
            return unpack_bits(self.bits[rows], self.shape[1])
        starts = self.row_ptr[rows].long()
        lengths = self.row_ptr[rows + 1].long() - starts
        total = lengths.sum().item()  # the entries of ``rows``: the one count read from the device
        torch._check(total >= 0)  # traced, an unbacked size: the calls below take it as their output's
        owner = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), lengths, output_size=total)
        ahead = torch.cumsum(lengths, 0) - lengths  # [N] the entries of the rows before each row
        slot = torch.arange(total, device=rows.device) + (starts - ahead)[owner]  # entry k: its row's (k - ahead)-th
        mask = torch.zeros(rows.numel(), self.shape[1], dtype=torch.bool, device=rows.device)
        mask[owner, self.columns[slot].long()] = True
        return mask

    def forward(self, rows: Tensor) -> Tensor:
        """Rows [N] → [N, D]: kept entries from ``values`` (sparse gradients), zeros elsewhere."""
        mask = self.mask_of(rows)
        slot = self.row_ptr[rows].long().unsqueeze(1) + mask.long().cumsum(1) - 1
        values = F.embedding(slot.clamp(min=0), self.values, sparse=True).squeeze(-1)
        return values * mask

    def memory_bytes(self) -> int:
        return self.stored_bytes


class PrunedTable(MultiStageMixin, EmbeddingMethod):
    """A table pruned entry by entry: dense ``weight`` [R, D] (all tables end to end) while
    the method searches its mask, then ``store(mask)`` keeps the masked entries as
    ``SparseRows``. Sized by ``pruned_size``: ``kept`` entries, target sparsity ``target``.
    Subclasses give ``stages``, ``advance`` (called before every dense training forward) and
    may override ``dense_rows``. Shapes: ids [N] of features [N] → [N, D]."""

    def __init__(self, schema: Schema, config: StagedConfig):
        super().__init__(schema, config)
        rows = sum(self.table_rows.values())
        self.kept, self.target = pruned_size(config.method, config, self.table_rows)
        self.register_buffer("row_start", table_starts(self.table_rows), persistent=False)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.weight = nn.Parameter(torch.randn(rows, config.dim) * config.init_std)
        self.sparse: SparseRows | None = None
        self.rows = rows

    def forward(self, sparse: JaggedFeatures) -> FeatureEmbeddings:
        if self.sparse is None and self.training and torch.is_grad_enabled():
            self.advance()
        return super().forward(sparse)

    def advance(self) -> None:
        """One training step of the search (dense phase only)."""

    def embed_ids(self, feature: Tensor, ids: Tensor) -> Tensor:
        rows = self.row_start[self.feature_table[feature]] + ids
        return self.sparse(rows) if self.sparse is not None else self.dense_rows(rows)

    def dense_rows(self, rows: Tensor) -> Tensor:
        """Rows [N] of the dense phase → [N, D]."""
        return F.embedding(rows, self.weight, sparse=True)

    def dense_parameters(self) -> list[nn.Parameter]:
        return [self.weight]

    def store(self, mask: Tensor) -> None:
        """Keeps the entries of ``weight`` under ``mask`` [R, D] as the stored format."""
        self.sparse = SparseRows(self.weight.detach(), mask)
        del self.weight

    def memory_bytes(self) -> int:
        """The stored format's bytes (before ``store``: the budget's)."""
        return self.sparse.memory_bytes() if self.sparse is not None else format_bytes(self.rows, self.dim, self.kept)[1]

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.sparse.values] if self.sparse is not None else self.dense_parameters()

    def stored_summary(self) -> dict[str, Any]:
        """Target sparsity and, once stored, the format and its bytes."""
        summary: dict[str, Any] = {"target_sparsity": round(self.target, 6), "steps": int(self.step)}
        if self.sparse is not None:
            summary.update(kept=self.sparse.values.numel(), format=self.sparse.format, memory_bytes=self.memory_bytes())
        return summary
