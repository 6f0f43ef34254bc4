"""The model contract: (schema, embedding layout, config) → a module mapping a batch to logits."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ctr.batch import Batch
from ctr.embeddings.types import EmbeddingLayout, FeatureEmbeddings
from ctr.recipe import ModelConfig
from ctr.schema import Schema


class CTRModel(nn.Module):
    """Base class of registered models.

    A model never owns embedding tables: the embedding method turns ids into
    ``FeatureEmbeddings`` and the model maps them (with the dense features) to logits.

    Args:
        schema: fitted schema (feature names, numeric features).
        layout: what the embedding method outputs (D, pooled and sequence features).
        config: the model's config (a subclass of ``ModelConfig``).
    """

    def __init__(self, schema: Schema, layout: EmbeddingLayout, config: ModelConfig):
        super().__init__()
        self.schema = schema
        self.layout = layout
        self.config = config

    @property
    def num_dense(self) -> int:
        return len(self.schema.dense_features)

    def forward(self, batch: Batch, embedded: FeatureEmbeddings) -> Tensor:
        """Logits [B] of one batch."""
        raise NotImplementedError

    def regularizer(self, batch: Batch, embedded: FeatureEmbeddings) -> Tensor:
        """Extra loss terms of the model (zero by default)."""
        return torch.zeros((), device=embedded.pooled.device)


def field_vectors(embedded: FeatureEmbeddings, layout: EmbeddingLayout, numeric: nn.Module | None, dense: Tensor) -> Tensor:
    """Every feature as one field vector: pooled, mean-pooled sequences, then numeric
    features embedded by ``numeric`` (value × vector): [B, F + S + Nd, D]."""
    fields = pool_sequences(embedded, layout)
    return fields if numeric is None else torch.cat([fields, numeric(dense)], dim=1)


def pool_sequences(embedded: FeatureEmbeddings, layout: EmbeddingLayout) -> Tensor:
    """Pooled features plus the masked mean of each per-position sequence: [B, F + S, D]."""
    fields = [embedded.pooled]
    for name in layout.sequences:
        mask = embedded.masks[name].unsqueeze(-1).to(embedded.pooled.dtype)
        mean = (embedded.sequences[name] * mask).sum(1) / mask.sum(1).clamp(min=1)
        fields.append(mean.unsqueeze(1))
    return torch.cat(fields, dim=1) if len(fields) > 1 else embedded.pooled
