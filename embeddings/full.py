"""``full``: the uncompressed baseline, one row of D floats per id of every vocabulary."""

from __future__ import annotations

import torch
from torch import Tensor

from ctr.embeddings.budget import BudgetUnreachableError
from ctr.embeddings.table import TableMethod
from ctr.recipe import EmbeddingConfig
from ctr.registry import EMBEDDINGS
from ctr.schema import Schema


@EMBEDDINGS.register("full", config=EmbeddingConfig)
class FullEmbedding(TableMethod):
    """Full embedding tables (no compression): the baseline of every benchmark.

    Each vocabulary gets its own block of rows in one buffer; features that ``share_with``
    another use its block. It is the reference of ``embedding.budget``: a budget below 1 is
    refused (``BudgetUnreachableError``, the smallest budget it reaches being 1) rather than
    ignored, so a recipe that asks for compression without a compressing method says so.

    Example:
        >>> method = FullEmbedding(schema, EmbeddingConfig(dim=16))  # doctest: +SKIP
        >>> method(batch.sparse).pooled.shape  # [B, F, 16]  # doctest: +SKIP
    """

    def __init__(self, schema: Schema, config: EmbeddingConfig):
        if config.budget is not None and config.budget < 1:
            why = "it keeps every table whole (the budget's reference; a compressing method such as hash or unified" \
                  " sizes itself from a budget)"
            raise BudgetUnreachableError("full", config.budget, 1.0, why)
        rows = schema.tables()
        super().__init__(schema, config, storage_rows=sum(rows.values()))
        starts = torch.tensor([0] + list(rows.values())[:-1], dtype=torch.int64).cumsum(0)
        self.register_buffer("table_start", starts, persistent=False)
        self.register_buffer("feature_start", starts[self.feature_table], persistent=False)  # one gather per id

    def rows_of(self, feature: Tensor, ids: Tensor) -> Tensor:
        start = self.feature_start[feature]
        shape = torch.broadcast_shapes(start.shape, ids.shape)
        return torch.add(ids, start, out=start.new_empty(shape))  # int64, row-major even for a transposed grid
