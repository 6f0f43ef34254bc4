"""``mde``: Mixed Dimension Embeddings — narrower rows for larger vocabularies, projected to D."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctr.embeddings.base import EmbeddingMethod
from ctr.embeddings.budget import FP32_BYTES, BudgetUnreachableError, budget_bytes, full_bytes
from ctr.recipe import EmbeddingConfig
from ctr.registry import EMBEDDINGS
from ctr.schema import Schema

ALPHA_STEP = 1e-3  # resolution of the α search


@dataclass
class MDEConfig(EmbeddingConfig):
    """Settings of ``mde``; ``budget`` is required (it sets α).

    Args:
        round_dim: round every dimension to the nearest power of two (the paper's and the
            artifact's default).
    """

    method: str = "mde"
    round_dim: bool = True


def mixed_dims(vocab: np.ndarray, dim: int, alpha: float, round_dim: bool) -> np.ndarray:
    """The power rule d_t = D · (n_min / n_t)^α [T], the smallest vocabulary at D, each
    rounded to an integer in [1, D] and then, with ``round_dim``, to 2^round(log2 d_t) ≤ D
    (in that order, as the paper's ``md_solver`` and the artifact's: 2.7 → 3 → 4)."""
    dims = np.clip(np.round(dim * (vocab.min() / vocab) ** alpha), 1, dim)
    if round_dim:
        dims = 2.0 ** np.round(np.log2(dims))
    return np.minimum(dims, dim).astype(np.int64)


def mde_bytes(vocab: np.ndarray, dims: np.ndarray, dim: int) -> int:
    """Rows n_t × d_t plus a d_t × D projection for every table narrower than D, in fp32."""
    projections = np.where(dims < dim, dims * dim, 0)
    return int((vocab * dims + projections).sum()) * FP32_BYTES


def alpha_ceiling(vocab: np.ndarray, dim: int) -> float:
    """The grid α from which no dimension changes: every table larger than the smallest has
    d_t = 1 (D · (n_min / n_t)^α < 1.5 rounds to 1); 0 when no table is larger."""
    larger = vocab[vocab > vocab.min()]
    if larger.size == 0 or dim < 2:
        return 0.0
    bound = math.log(dim / 1.5) / math.log(larger.min() / vocab.min())
    return (math.floor(bound / ALPHA_STEP) + 1) * ALPHA_STEP


def alpha_for_budget(tables: dict[str, int], config: MDEConfig) -> float:
    """The smallest α (on a 1e-3 grid) whose tables fit the budget: the widest rows that fit."""
    vocab = np.array(list(tables.values()), dtype=np.float64)
    limit = budget_bytes(config, "mde", tables)
    cost = lambda a: mde_bytes(vocab, mixed_dims(vocab, config.dim, a, config.round_dim), config.dim)  # noqa: E731
    top = alpha_ceiling(vocab, config.dim)
    if cost(top) > limit:
        full = full_bytes(tables, config.dim)
        why = "the smallest table keeps D and every other table at least one dimension"
        raise BudgetUnreachableError("mde", config.budget, cost(top) / full, why)
    low, high = 0, round(top / ALPHA_STEP)
    while low < high:  # cost falls as α grows: the first grid point that fits
        middle = (low + high) // 2
        if cost(middle * ALPHA_STEP) <= limit:
            high = middle
        else:
            low = middle + 1
    return low * ALPHA_STEP


class ProjectedTables(nn.Module):
    """One table [n_t, d_t] per vocabulary and, where d_t < D, its projection [d_t, D].

    Args:
        vocab: ids n_t of every table; dims: d_t of every table; dim: D; init_std: of the rows.
    """

    def __init__(self, vocab: list[int], dims: list[int], dim: int, init_std: float):
        super().__init__()
        self.dim = dim
        self.tables = nn.ParameterList(nn.Parameter(torch.randn(n, d) * init_std) for n, d in zip(vocab, dims))
        self.projections = nn.ParameterDict({  # N(0, 1/d_t): projected rows keep the rows' scale
            str(t): nn.Parameter(torch.randn(d, dim) / d**0.5) for t, d in enumerate(dims) if d < dim
        })

    def forward(self, tables: Tensor, ids: Tensor) -> Tensor:
        """Ids [N] of tables [N] → [N, D]."""
        if torch.compiler.is_exporting():
            return self._every_table(tables, ids)
        out = torch.zeros(ids.numel(), self.dim, device=ids.device)
        for t in tables.unique().tolist():
            chosen = torch.nonzero(tables == t).squeeze(1)
            rows = F.embedding(ids[chosen], self.tables[t], sparse=True)  # [n, d_t]
            if str(t) in self.projections:
                rows = rows @ self.projections[str(t)]
            out = out.index_copy(0, chosen, rows)
        return out

    def _every_table(self, tables: Tensor, ids: Tensor) -> Tensor:
        """``forward`` with every id looked up in every table (clamped to its rows) and kept
        where it is the id's table: no shape depends on the ids (what ``torch.export`` traces)."""
        out = torch.zeros(ids.numel(), self.dim, device=ids.device)
        for t, table in enumerate(self.tables):
            rows = F.embedding(ids.clamp(max=table.shape[0] - 1), table)
            if str(t) in self.projections:
                rows = rows @ self.projections[str(t)]
            out = torch.where((tables == t).unsqueeze(1), rows, out)
        return out


@EMBEDDINGS.register("mde", config=MDEConfig)
class MDEmbedding(EmbeddingMethod):
    """Mixed Dimension Embeddings (MDE).

    Ginart, Naumov, Mudigere, Yang, Zou, "Mixed Dimension Embeddings with Application to
    Memory-Efficient Recommendation Systems", ISIT 2021 (arXiv 1909.11810). Table t of n_t
    ids gets d_t = D · (n_min / n_t)^α dimensions (the paper's power rule with the smallest
    table at the base dimension D, as the artifact's ``md_solver``), rounded to a power of
    two; a row of a narrower table is projected to D by the table's own d_t × D matrix.

    Sizing: α is the smallest value (grid 1e-3) whose rows + projections fit ``budget`` ×
    full bytes; larger budgets keep wider rows. ``memory_bytes`` = Σ n_t·d_t + d_t·D (for
    d_t < D) floats. Below the bytes of the smallest table at D plus one dimension for every
    other table the budget is refused.

    As in the artifact's MDE trainer (``get_dims_from_compress_rate``), the budget sets α, so
    the method can stand in a table of budgets.

    Shapes: ids [N] of features [N] → [N, D].
    """

    needs_budget = True

    def __init__(self, schema: Schema, config: MDEConfig):
        super().__init__(schema, config)
        vocab = np.array(list(self.table_rows.values()), dtype=np.float64)
        self.alpha = alpha_for_budget(self.table_rows, config)
        self.dims = [int(d) for d in mixed_dims(vocab, config.dim, self.alpha, config.round_dim)]
        self.rows = ProjectedTables(list(self.table_rows.values()), self.dims, config.dim, config.init_std)

    def embed_ids(self, feature: Tensor, ids: Tensor) -> Tensor:
        return self.rows(self.feature_table[feature], ids)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return list(self.rows.tables)
