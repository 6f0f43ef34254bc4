"""``compo``: quotient-remainder compositional embeddings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctr.embeddings.base import EmbeddingMethod
from ctr.embeddings.budget import FP32_BYTES, BudgetUnreachableError, budget_bytes
from ctr.errors import refuse_for_training
from ctr.recipe import EmbeddingConfig
from ctr.registry import EMBEDDINGS
from ctr.schema import Schema

INDEX_BYTES = 8  # the remainder size m of each table, int64


@dataclass
class CompoConfig(EmbeddingConfig):
    """Settings of ``compo``; ``budget`` is required.

    Args:
        operation: how the quotient and remainder rows combine: ``mult`` (element-wise
            product, the artifact's default), ``add``, or ``concat`` (each row D / 2 wide).
    """

    method: str = "compo"
    operation: Literal["mult", "add", "concat"] = "mult"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.operation == "concat" and self.dim % 2:
            raise ValueError(f"operation concat needs an even dim, got {self.dim}")
        if self.operation == "mult" and self.init_std == 0:
            refuse_for_training("init_std: must be > 0 for compo's operation mult, got 0.0 (a product of two rows "
                                "that start at 0 has no gradient: they would never train)")


def compo_floats(vocab: np.ndarray, m: np.ndarray, dim: int, concat: bool) -> np.ndarray:
    """Floats stored for remainder sizes ``m`` [M] over tables of ``vocab`` [T] ids: [M].

    A table is split when its quotient and remainder rows, ⌈V/m⌉ + m, store less than its
    full rows; else it keeps one row per id. Concat rows are D / 2 wide (a full table then
    stores two half rows per id, V · D floats as well).
    """
    width = dim // 2 if concat else dim
    split = (np.ceil(vocab[None, :] / m[:, None]) + m[:, None]) * width
    return np.minimum(split, vocab[None, :] * dim).sum(1)


def remainder_size(tables: dict[str, int], config: CompoConfig) -> int:
    """The smallest remainder size m whose tables fit the budget (the artifact bisects the
    same curve but rounds to the last m over the budget, often one smaller)."""
    limit = budget_bytes(config, "compo", tables) - INDEX_BYTES * len(tables)
    vocab = np.array(list(tables.values()), dtype=np.float64)
    candidates = np.arange(2, math.isqrt(int(vocab.max())) + 3)
    floats = compo_floats(vocab, candidates, config.dim, config.operation == "concat")
    fits = np.nonzero(floats * FP32_BYTES <= limit)[0]
    if not fits.size:
        full = vocab.sum() * config.dim * FP32_BYTES
        least = (floats.min() * FP32_BYTES + INDEX_BYTES * len(tables)) / full
        raise BudgetUnreachableError("compo", config.budget, least, "quotient plus remainder rows need more")
    return int(candidates[fits[0]])


@EMBEDDINGS.register("compo", config=CompoConfig)
class CompoEmbedding(EmbeddingMethod):
    """Quotient-remainder compositional embeddings (CompoEmb).

    Shi et al., "Compositional Embeddings Using Complementary Partitions for Memory-Efficient
    Recommendation Systems", KDD 2020; sized as the VLDB 2024 benchmark's artifact does
    (PKU-DAIR/Hetu, tools/EmbeddingMemoryCompression: one remainder size m for every table).
    Id x of a split table t embeds as q_t[x // m] ∘ r_t[x mod m] with ∘ the element-wise
    product (``mult``), sum (``add``) or concatenation (``concat``, rows D / 2 wide): two
    ids share a quotient row or a remainder row, never both (complementary partitions).
    Tables where ⌈V/m⌉ + m rows would not save memory keep one row per id.

    Sizing: m is the smallest remainder size whose rows fit ``budget`` × full bytes.
    ``memory_bytes`` = every stored row (fp32) + m of each table (int64).

    Initialisation: ``mult`` rows start at N(0, √init_std) so the product's scale is
    init_std (deviation: the artifact initialises both tables like a full table).

    Shapes: ids [N] of features [N] → [N, D].
    """

    needs_budget = True

    def __init__(self, schema: Schema, config: CompoConfig):
        super().__init__(schema, config)
        tables = self.table_rows
        m = remainder_size(tables, config)
        concat = config.operation == "concat"
        split = np.array([math.ceil(v / m) + m < (2 * v if concat else v) for v in tables.values()])
        quotient = [math.ceil(v / m) if s else v for v, s in zip(tables.values(), split)]
        remainder = [m if s else (v if concat else 0) for v, s in zip(tables.values(), split)]
        self.register_buffer("remainder", torch.tensor([m if s else 0 for s in split], dtype=torch.int64))
        starts = np.cumsum([0] + [q + r for q, r in zip(quotient, remainder)])
        self.register_buffer("q_start", torch.tensor(starts[:-1], dtype=torch.int64), persistent=False)
        self.register_buffer("r_start", torch.tensor(starts[:-1] + quotient, dtype=torch.int64), persistent=False)
        self.weight = nn.Parameter(torch.empty(int(starts[-1]), config.dim // 2 if concat else config.dim))
        self._init_rows(quotient, remainder, split)

    def _init_rows(self, quotient: list[int], remainder: list[int], split: np.ndarray) -> None:
        std = {"mult": math.sqrt(self.config.init_std), "add": self.config.init_std / math.sqrt(2)}
        with torch.no_grad():
            for t, (q, r) in enumerate(zip(quotient, remainder)):
                start = int(self.q_start[t])
                scale = std.get(self.config.operation, self.config.init_std) if split[t] else self.config.init_std
                self.weight[start : start + q + r].normal_(std=scale)

    def embed_ids(self, feature: Tensor, ids: Tensor) -> Tensor:
        table = self.feature_table[feature]
        m = self.remainder[table]
        split = m > 0
        divisor = m.clamp(min=1)
        q_rows = self.q_start[table] + torch.where(split, ids // divisor, ids)
        r_rows = self.r_start[table] + torch.where(split, ids % divisor, ids)
        q = F.embedding(q_rows, self.weight, sparse=True)
        if self.config.operation == "concat":
            return torch.cat([q, F.embedding(r_rows, self.weight, sparse=True)], dim=1)
        r = F.embedding(torch.where(split, r_rows, q_rows), self.weight, sparse=True)
        combined = q * r if self.config.operation == "mult" else q + r
        return torch.where(split.unsqueeze(1), combined, q)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.weight]
