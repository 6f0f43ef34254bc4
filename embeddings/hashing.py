"""``hash``: per-feature hashing, the baseline every compressing method must beat at equal memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ctr.embeddings.budget import hashed_rows, require_budget
from ctr.embeddings.storage import draw_hash_seeds, universal_hash
from ctr.embeddings.table import TableMethod
from ctr.recipe import EmbeddingConfig
from ctr.registry import EMBEDDINGS
from ctr.schema import Schema


@dataclass
class HashConfig(EmbeddingConfig):
    """Settings of ``hash``: the common keys; ``budget`` is required."""

    method: str = "hash"


@EMBEDDINGS.register("hash", config=HashConfig)
class HashEmbedding(TableMethod):
    """Per-feature hashing: each vocabulary hashed into its own smaller table.

    The hashing trick (Weinberger et al., "Feature Hashing for Large Scale Multitask
    Learning", ICML 2009), the ``Hash`` baseline of "Experimental Analysis of Large-scale
    Learnable Vector Storage Compression" (Zhang et al., VLDB 2024). Table t of V_t ids gets
    m_t ≈ budget · V_t rows (exactly: its vocabulary's share of the rows the budget holds
    after the hash seeds, at least 1 and at most V_t), and id x maps to row ((a_t·x + b_t) mod p) mod m_t, a 2-universal hash
    with seeds drawn once per table. Features that ``share_with`` a table share its hash.

    ``memory_bytes`` = Σ m_t · D · 4 + 16 bytes of seeds per hashed table ≤ budget × full.

    Example:
        >>> method = HashEmbedding(schema, HashConfig(dim=16, budget=0.1))  # doctest: +SKIP
    """

    needs_budget = True

    def __init__(self, schema: Schema, config: HashConfig):
        tables = schema.tables()
        rows = hashed_rows(tables, config.dim, require_budget(config, "hash"))
        super().__init__(schema, config, storage_rows=sum(rows.values()))
        counts = torch.tensor([rows[t] for t in tables], dtype=torch.int64)
        hashed = torch.tensor([rows[t] < tables[t] for t in tables])
        seed_of_table = torch.full((len(tables),), -1, dtype=torch.int64)
        seed_of_table[hashed] = torch.arange(int(hashed.sum()))
        self.register_buffer("seeds", draw_hash_seeds(int(hashed.sum())))
        self.register_buffer("seed_of_table", seed_of_table, persistent=False)
        self.register_buffer("table_buckets", counts, persistent=False)
        self.register_buffer("table_start", torch.cumsum(counts, 0) - counts, persistent=False)

    def rows_of(self, feature: Tensor, ids: Tensor) -> Tensor:
        table = self.feature_table[feature]
        if self.seeds.shape[0] == 0:
            return self.table_start[table] + ids
        seed = self.seed_of_table[table]
        pair = self.seeds[seed.clamp(min=0)]
        hashed = universal_hash(ids, pair[:, 0], pair[:, 1], self.table_buckets[table])
        return self.table_start[table] + torch.where(seed >= 0, hashed, ids)

    def memory_bytes(self) -> int:
        return self.weight.numel() * self.weight.element_size() + self.seeds.numel() * self.seeds.element_size()
