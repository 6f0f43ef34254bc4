"""``lr``: logistic regression, the first-order baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ctr.batch import Batch
from ctr.embeddings.types import EmbeddingLayout, FeatureEmbeddings
from ctr.models.base import CTRModel, pool_sequences
from ctr.recipe import ModelConfig
from ctr.registry import MODELS
from ctr.schema import Schema


@dataclass
class LRConfig(ModelConfig):
    """LR has no settings beyond its name."""

    name: str = "lr"


@MODELS.register("lr", config=LRConfig)
class LR(CTRModel):
    """Logistic regression: logit = b + w·x_dense + Σ_f u_f·e_f.

    ``u_f·e_f`` is linear in the one-hot of feature f's id, so this is exactly a logistic
    regression over one-hot ids (each id's weight is u_f·e_id), sharing the embedding tables
    (and therefore any compression method) with the other models. Sequence features are
    mean-pooled over their valid positions.
    """

    def __init__(self, schema: Schema, layout: EmbeddingLayout, config: LRConfig):
        super().__init__(schema, layout, config)
        width = (len(layout.pooled) + len(layout.sequences)) * layout.dim + self.num_dense
        self.linear = nn.Linear(width, 1)

    def forward(self, batch: Batch, embedded: FeatureEmbeddings) -> Tensor:
        fields = pool_sequences(embedded, self.layout)  # [B, F, D]
        return self.linear(torch.cat([fields.flatten(1), batch.dense], dim=1)).squeeze(-1)
