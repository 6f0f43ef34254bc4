"""``robe``: ROBE — every embedding read from one shared, hashed 1-D array."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctr.embeddings.base import EmbeddingMethod
from ctr.embeddings.budget import FP32_BYTES, BudgetUnreachableError, budget_bytes
from ctr.embeddings.storage import SEED_BYTES, draw_hash_seeds, hashed_table_starts, universal_hash
from ctr.recipe import EmbeddingConfig
from ctr.registry import EMBEDDINGS
from ctr.schema import Schema


@dataclass
class RobeConfig(EmbeddingConfig):
    """Settings of ``robe``; ``budget`` is required.

    Args:
        block: Z, the consecutive elements of a row read from one hashed offset (ROBE-Z);
            must divide ``dim``. 1 = every element hashed on its own. The artifact's
            default ``Z`` = 1 counts blocks per row, not elements: one hashed offset per
            row, all D elements consecutive (ctr's ``block`` = ``dim``).
    """

    method: str = "robe"
    block: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block < 1 or self.dim % self.block:
            raise ValueError(f"block: {self.block} must divide dim {self.dim}")


@EMBEDDINGS.register("robe", config=RobeConfig)
class RobeEmbedding(EmbeddingMethod):
    """ROBE: Random Offset Block Embedding.

    Desai, Chou, Shrivastava, "Random Offset Block Embedding (ROBE) for compressed embedding
    tables in deep learning recommendation systems", MLSys 2022. One 1-D array A of M
    floats holds every table. Id x of table t (global row g = start_t + x) reads its D
    elements in D / Z blocks of Z consecutive elements: block c starts at offset
    h_c(g) = ((a_c·g + b_c) mod p) mod M and wraps around the array's end, and element j
    is multiplied by a sign s_j(g) = 1 − 2·(((a'_j·g + b'_j) mod p) mod 2):
    e[cZ + i] = s_{cZ+i}(g) · A[(h_c(g) + i) mod M]. Features of every table share A.

    Sizing: M = the floats ``budget`` × full bytes hold after the seeds (D / Z offset and D
    sign pairs of int64). ``memory_bytes`` = 4·M + 16·(D / Z + D).

    Deviation: the paper hashes (table, id, block) with one universal hash; here each block
    and each sign has its own 2-universal hash of the global row (ids are global rows, so
    two tables' ids never share a key). The tables together may hold at most p = 2³¹ − 1 rows
    (past it rows g and g + p would hash alike; refused).

    Shapes: ids [N] of features [N] → [N, D].
    """

    needs_budget = True

    def __init__(self, schema: Schema, config: RobeConfig):
        super().__init__(schema, config)
        self.register_buffer("row_start", hashed_table_starts("robe", self.table_rows), persistent=False)
        blocks = config.dim // config.block
        seed_bytes = SEED_BYTES * (blocks + config.dim)
        size = math.floor((budget_bytes(config, "robe", self.table_rows) - seed_bytes) / FP32_BYTES)
        if size < config.block:
            least = (seed_bytes + config.block * FP32_BYTES) / self.full_bytes()
            raise BudgetUnreachableError("robe", config.budget, least, f"its hash seeds take {seed_bytes} bytes")
        self.array = nn.Parameter(torch.empty(size, 1).normal_(std=config.init_std))
        self.register_buffer("offset_seeds", draw_hash_seeds(blocks))
        self.register_buffer("sign_seeds", draw_hash_seeds(config.dim))
        self.register_buffer("within", torch.arange(config.block).repeat(blocks), persistent=False)

    def positions(self, feature: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Array positions [N, D] of each id's elements and their signs [N, D] (±1)."""
        rows = (self.row_start[self.feature_table[feature]] + ids).unsqueeze(1)
        size = self.array.shape[0]
        offsets = universal_hash(rows, self.offset_seeds[:, 0], self.offset_seeds[:, 1], size)  # [N, D / Z]
        starts = offsets.repeat_interleave(self.config.block, dim=1)
        positions = torch.remainder(starts + self.within, size)
        signs = 1 - 2 * universal_hash(rows, self.sign_seeds[:, 0], self.sign_seeds[:, 1], 2)
        return positions, signs

    def embed_ids(self, feature: Tensor, ids: Tensor) -> Tensor:
        positions, signs = self.positions(feature, ids)
        values = F.embedding(positions, self.array, sparse=True).squeeze(-1)  # [N, D]
        return values * signs.to(values.dtype)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.array]
