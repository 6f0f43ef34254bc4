"""``adaptemb``: frequent ids own rows, rare ids share hashed rows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctr.embeddings.base import EmbeddingMethod
from ctr.embeddings.budget import (
    FP32_BYTES, BudgetUnreachableError, budget_bytes, share_rows, table_counts,
)
from ctr.embeddings.storage import SEED_BYTES, draw_hash_seeds, universal_hash
from ctr.recipe import EmbeddingConfig
from ctr.registry import EMBEDDINGS
from ctr.schema import Schema

ID_BYTES = 4  # a frequent id, int32
KEY_STRIDE = 1 << 40  # (table, id) sorted as table · 2⁴⁰ + id


@dataclass
class AdaptEmbConfig(EmbeddingConfig):
    """Settings of ``adaptemb``; ``budget`` is required.

    Args:
        frequent_fraction: share of all ids (ranked by training frequency over every
            table) that own a row (the artifact's 10 %), fewer when the budget demands it.
        frequent_budget_share: at most this share of the budget goes to frequent rows; the
            rest is the rare ids' hashed rows.
    """

    method: str = "adaptemb"
    frequent_fraction: float = 0.1
    frequent_budget_share: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.frequent_fraction <= 1:
            raise ValueError(f"frequent_fraction must be in [0, 1], got {self.frequent_fraction}")
        if not 0 <= self.frequent_budget_share < 1:
            raise ValueError(f"frequent_budget_share must be in [0, 1), got {self.frequent_budget_share}")


def frequent_ids(counts: dict[str, np.ndarray], keep: int) -> dict[str, np.ndarray]:
    """The ``keep`` ids seen most often in training, over all tables (ties: smaller table
    index, then smaller id), as each table's sorted id array; ids never seen are not kept."""
    flat = np.concatenate(list(counts.values()))
    keep = min(keep, int((flat > 0).sum()))
    chosen = np.zeros(flat.shape[0], dtype=bool)
    chosen[np.argsort(-flat, kind="stable")[:keep]] = True
    out, start = {}, 0
    for name, table in counts.items():
        out[name] = np.nonzero(chosen[start : start + table.shape[0]])[0]
        start += table.shape[0]
    return out


def adapt_sizes(config: AdaptEmbConfig, counts: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Frequent ids of each table and the hashed rows of its rare ids within the budget."""
    tables = {name: c.shape[0] for name, c in counts.items()}
    limit = budget_bytes(config, "adaptemb", tables) - SEED_BYTES * len(tables)
    row_bytes = config.dim * FP32_BYTES
    for_frequent = min(config.frequent_budget_share * limit, limit - row_bytes * len(tables))  # a rare row per table
    frequent_cap = math.floor(max(for_frequent, 0) / (row_bytes + ID_BYTES))
    frequent = frequent_ids(counts, min(math.ceil(config.frequent_fraction * sum(tables.values())), frequent_cap))
    rare = {name: tables[name] - ids.shape[0] for name, ids in frequent.items()}
    used = sum(ids.shape[0] for ids in frequent.values()) * (row_bytes + ID_BYTES)
    rows = math.floor((limit - used) / row_bytes)
    with_rare = {name: n for name, n in rare.items() if n}
    if rows < len(with_rare):
        least = (SEED_BYTES + row_bytes) * len(tables) / (sum(tables.values()) * row_bytes)
        raise BudgetUnreachableError("adaptemb", config.budget, least, "every table needs a seed and one shared row")
    shares = share_rows(with_rare, rows) if with_rare else {}
    return frequent, {name: shares.get(name, 0) for name in tables}


@EMBEDDINGS.register("adaptemb", config=AdaptEmbConfig)
class AdaptEmbedding(EmbeddingMethod):
    """AdaptEmb: frequency-adaptive rows — frequent ids own a row, rare ids share hashed rows.

    The ``adapt`` method of "Experimental Analysis of Large-scale Learnable Vector Storage
    Compression" (Zhang et al., VLDB 2024; artifact PKU-DAIR/Hetu,
    tools/EmbeddingMemoryCompression), after the frequency-adaptive embeddings of Ginart et
    al. (MDE, ISIT 2021) and Kang et al. (MGQE, WWW 2020): the ``frequent_fraction`` ids seen
    most often in the training split (from the schema's counts, over all tables) get their
    own row; every other id x of table t shares row ((a_t·x + b_t) mod p) mod m_t of the
    table's hashed block.

    Sizing: frequent rows take at most ``frequent_budget_share`` of ``budget`` × full bytes
    (fewer frequent ids when they would take more); the rest is split among the tables'
    hashed blocks in proportion to their rare ids. ``memory_bytes`` = frequent rows + the
    sorted frequent ids of each table (int32: a deployed model finds an id's row by binary
    search, the artifact's remap array of one int per id costs more and it leaves it
    uncounted) + hashed rows + 16 bytes of seeds per table.

    Deviations from the artifact: it ranks each table's ids apart (``use_multi``), sizes by
    rows only with 10 % frequent rows and the rest of ⌈budget · rows⌉ rare, and sends the
    k-th rare id to row k mod m instead of hashing it.

    Shapes: ids [N] of features [N] → [N, D].
    """

    needs_budget = True

    def __init__(self, schema: Schema, config: AdaptEmbConfig):
        super().__init__(schema, config)
        frequent, hashed = adapt_sizes(config, table_counts(schema, "adaptemb"))
        own = [frequent[name].shape[0] for name in self.table_names]
        buckets = [hashed[name] for name in self.table_names]
        sizes = torch.tensor([o + b for o, b in zip(own, buckets)], dtype=torch.int64)
        self.register_buffer("frequent", torch.from_numpy(np.concatenate(list(frequent.values()))).to(torch.int32))
        bounds = torch.tensor([0] + own, dtype=torch.int64).cumsum(0)
        self.register_buffer("frequent_bounds", bounds, persistent=False)
        table_of = torch.repeat_interleave(torch.arange(len(own)), torch.tensor(own, dtype=torch.int64))
        keys = torch.cat([table_of * KEY_STRIDE + self.frequent.long(), torch.tensor([torch.iinfo(torch.int64).max])])
        self.register_buffer("frequent_keys", keys, persistent=False)  # ends with a sentinel no id reaches
        self.register_buffer("row_start", torch.cumsum(sizes, 0) - sizes, persistent=False)
        self.register_buffer("own_rows", torch.tensor(own, dtype=torch.int64), persistent=False)
        self.register_buffer("buckets", torch.tensor(buckets, dtype=torch.int64).clamp(min=1), persistent=False)
        self.register_buffer("seeds", draw_hash_seeds(len(self.table_names)))
        self.weight = nn.Parameter(torch.empty(int(sizes.sum()), config.dim).normal_(std=config.init_std))

    def rows_of(self, feature: Tensor, ids: Tensor) -> Tensor:
        """Row [N] of each id: its own row if it is frequent, else its table's hashed row."""
        table = self.feature_table[feature]
        key = table * KEY_STRIDE + ids
        position = torch.searchsorted(self.frequent_keys, key)
        own = self.frequent_keys[position] == key
        pair = self.seeds[table]
        hashed = universal_hash(ids, pair[:, 0], pair[:, 1], self.buckets[table])
        local = torch.where(own, position - self.frequent_bounds[table], self.own_rows[table] + hashed)
        return self.row_start[table] + local

    def embed_ids(self, feature: Tensor, ids: Tensor) -> Tensor:
        return F.embedding(self.rows_of(feature, ids), self.weight, sparse=True)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.weight]
