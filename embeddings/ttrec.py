"""``ttrec``: TT-Rec — large tables stored as three tensor-train cores."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctr.embeddings.base import EmbeddingMethod
from ctr.embeddings.budget import FP32_BYTES, capped_knob, require_budget
from ctr.errors import refuse_for_training
from ctr.recipe import EmbeddingConfig
from ctr.registry import EMBEDDINGS
from ctr.schema import Schema
from ctr.typed import require_at_least


@dataclass
class TTRecConfig(EmbeddingConfig):
    """Settings of ``ttrec``; ``budget`` is required.

    Args:
        max_rank: the compute limit: a budget that needs a larger TT rank is refused (the
            paper evaluates ranks 8 to 64; a batch gathers an R × d₂ × R middle core per id).
    """

    method: str = "ttrec"
    max_rank: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "max_rank")
        if self.init_std == 0:
            refuse_for_training("init_std: must be > 0 for ttrec, got 0.0 (a product of cores that start at 0 has "
                                "no gradient: they would never train)")


def three_factors(n: int) -> tuple[int, int, int]:
    """D split into three factors d₁·d₂·d₃ = n near its cube root, ascending as the
    artifact's ``_get_decomp_dim`` sorts them (16 → 2, 2, 4; 32 → 2, 4, 4)."""
    first = max(d for d in range(1, math.ceil(round(n ** (1 / 3), 9)) + 1) if n % d == 0)
    rest = n // first
    second = max(d for d in range(1, math.ceil(math.sqrt(rest)) + 1) if rest % d == 0)
    low, middle, high = sorted((first, second, rest // second))
    return low, middle, high


def row_factors(vocab: int) -> tuple[int, int, int]:
    """V rows covered by v₁·v₂·v₃ ≥ V near the cube root (the artifact's rule)."""
    first = math.ceil(round(vocab ** (1 / 3), 9))
    second = math.ceil(math.sqrt(vocab / first))
    return first, second, math.ceil(vocab / (first * second))


def core_floats(vocab: int, dims: tuple[int, int, int], rank: int) -> int:
    """Floats of a table's three cores at ``rank``: v₁·d₁·R + v₂·R·d₂·R + v₃·R·d₃."""
    v1, v2, v3 = row_factors(vocab)
    d1, d2, d3 = dims
    return v1 * d1 * rank + v2 * rank * d2 * rank + v3 * rank * d3


def stored_floats(tables: dict[str, int], dim: int, rank: int) -> int:
    """Floats of all tables at ``rank``: cores where they store less than the table, else full rows."""
    dims = three_factors(dim)
    return sum(min(core_floats(v, dims, rank), v * dim) for v in tables.values())


def tt_rank(config: TTRecConfig, tables: dict[str, int]) -> int:
    """The largest rank whose tables fit the budget; refused past ``max_rank``."""
    require_budget(config, "ttrec")
    ceiling = math.isqrt(max(tables.values()) * config.dim) + 1  # every table full from here on
    middle = three_factors(config.dim)[1]
    return capped_knob(
        "ttrec", config.budget, sum(tables.values()) * config.dim * FP32_BYTES,
        lambda r: stored_floats(tables, config.dim, r) * FP32_BYTES, ("TT rank", config.max_rank, ceiling),
        lambda r: f"a {r} x {middle} x {r} core gathered per id",
    )


@EMBEDDINGS.register("ttrec", config=TTRecConfig)
class TTRecEmbedding(EmbeddingMethod):
    """TT-Rec: tensor-train embedding tables.

    Yin et al., "TT-Rec: Tensor Train Compression for Deep Learning Recommendation Model
    Embeddings", MLSys 2021; factorisation as in the VLDB 2024 benchmark's artifact
    (PKU-DAIR/Hetu, tools/EmbeddingMemoryCompression). A table of V rows is viewed as a
    (v₁v₂v₃) × (d₁d₂d₃) matrix with v₁ = ⌈V^⅓⌉, v₂ = ⌈√(V/v₁)⌉, v₃ = ⌈V/(v₁v₂)⌉ and D split
    near its cube root, ascending (16 → 2·2·4, 32 → 2·4·4), stored as three cores
    G₁ [v₁, d₁, R], G₂ [v₂, R, d₂, R], G₃ [v₃, R, d₃]. Id x = (i₁, i₂, i₃) in mixed radix
    embeds as G₁[i₁] · G₂[i₂] · G₃[i₃] reshaped to D. Tables whose cores would not store
    less than V·D floats keep full rows.

    Sizing: R is the largest rank, the same for every table, whose floats fit ``budget`` ×
    full bytes; past ``max_rank`` the budget is refused (``ComputeLimitError``).
    ``memory_bytes`` = cores + full rows, fp32.

    Training: each batch contracts the cores once per distinct id of a table. Cores are
    dense parameters (the dense optimizer), full rows sparse. Cores start at N(0, σ) with
    σ³·R = init_std, so a row's scale matches a full table's (the paper samples cores
    so the product is Gaussian-like).

    Shapes: ids [N] of features [N] → [N, D].
    """

    needs_budget = True

    def __init__(self, schema: Schema, config: TTRecConfig):
        super().__init__(schema, config)
        rank = tt_rank(config, self.table_rows)
        self.rank, self.dims = rank, three_factors(config.dim)
        std = (config.init_std / rank) ** (1 / 3)
        self.cores = nn.ParameterList()
        self.core_of_table: list[int] = []
        self.row_factors: list[tuple[int, int, int]] = []
        full_rows = []
        for vocab in self.table_rows.values():
            factors = row_factors(vocab)
            if core_floats(vocab, self.dims, rank) < vocab * config.dim:
                self.core_of_table.append(len(self.cores) // 3)
                self.row_factors.append(factors)
                shapes = [(factors[0], self.dims[0] * rank), (factors[1], rank * self.dims[1] * rank),
                          (factors[2], rank * self.dims[2])]
                self.cores.extend(nn.Parameter(torch.empty(shape).normal_(std=std)) for shape in shapes)
            else:
                self.core_of_table.append(-1)
                self.row_factors.append(factors)
            full_rows.append(0 if self.core_of_table[-1] >= 0 else vocab)
        sizes = torch.tensor(full_rows, dtype=torch.int64)
        self.register_buffer("full_start", torch.cumsum(sizes, 0) - sizes, persistent=False)
        self.weight = nn.Parameter(torch.empty(int(sizes.sum()), config.dim).normal_(std=config.init_std))

    def rows(self, table: int, ids: Tensor) -> Tensor:
        """Rows [N, D] of ids [N] of table ``table`` (cores contracted per distinct id)."""
        core = self.core_of_table[table]
        if core < 0:
            return F.embedding(self.full_start[table] + ids, self.weight, sparse=True)
        exporting = torch.compiler.is_exporting()  # no unique ids: their count depends on the data
        unique, inverse = (ids, None) if exporting else torch.unique(ids, return_inverse=True)
        _, v2, v3 = self.row_factors[table]
        (d1, d2, d3), rank = self.dims, self.rank
        first, middle, last = (self.cores[3 * core + i] for i in range(3))
        # index_select, not core[...]: the backward of advanced indexing adds with atomics on
        # several CPU threads, in no fixed order (gradients would differ from run to run)
        a = first.index_select(0, unique // (v2 * v3)).view(-1, d1, rank)
        b = middle.index_select(0, (unique // v3) % v2).view(-1, rank, d2 * rank)
        c = last.index_select(0, unique % v3).view(-1, rank, d3)
        ab = torch.bmm(a, b).view(-1, d1 * d2, rank)
        out = torch.bmm(ab, c).reshape(-1, self.dim)
        return out if inverse is None else out.index_select(0, inverse)

    def embed_ids(self, feature: Tensor, ids: Tensor) -> Tensor:
        tables = self.feature_table[feature]
        if torch.compiler.is_exporting():
            return self._every_table(tables, ids)
        out = self.weight.new_empty(ids.shape[0], self.dim)
        for table in tables.unique().tolist():
            chosen = torch.nonzero(tables == table).squeeze(1)
            out = out.index_copy(0, chosen, self.rows(table, ids[chosen]))
        return out

    def _every_table(self, tables: Tensor, ids: Tensor) -> Tensor:
        """``embed_ids`` with every id looked up in every table (clamped to its rows) and kept
        where it is the id's table: no shape depends on the ids (what ``torch.export`` traces)."""
        out = self.weight.new_zeros(ids.shape[0], self.dim)
        for table, vocab in enumerate(self.table_rows.values()):
            rows = self.rows(table, ids.clamp(max=vocab - 1))
            out = torch.where((tables == table).unsqueeze(1), rows, out)
        return out

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.weight]
