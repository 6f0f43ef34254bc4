"""``dcn``: Deep & Cross Network (Wang et al., ADKDD 2017, arXiv:1708.05123)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ctr.batch import Batch
from ctr.embeddings.types import EmbeddingLayout, FeatureEmbeddings
from ctr.models.base import CTRModel, pool_sequences
from ctr.models.layers import CrossNetwork, MLPConfig
from ctr.recipe import ModelConfig
from ctr.registry import MODELS
from ctr.schema import Schema
from ctr.typed import require_at_least


@dataclass
class DCNConfig(MLPConfig, ModelConfig):
    """DCN settings (defaults: the paper's best Criteo setting, §4.4).

    Args:
        cross_layers: number of cross layers (paper: 6).
        hidden: deep network widths (paper: 2 layers of 1024; ``[]``: no deep network).
        activation, dropout: of the deep network.
        batch_norm: BatchNorm in the deep network (the paper applies it, §4.2).
    """

    name: str = "dcn"
    cross_layers: int = 6
    hidden: list[int] = field(default_factory=lambda: [1024, 1024])
    batch_norm: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "cross_layers")


@MODELS.register("dcn", config=DCNConfig)
class DCN(CTRModel):
    """Deep & Cross Network: a cross network and a deep network in parallel over x_0.

    x_0 stacks the embeddings and the (normalised) numeric values (paper Eq. 2); each cross
    layer computes ``x_{l+1} = x_0 (x_lᵀ w_l) + b_l + x_l`` (Eq. 3), so layer l holds
    polynomial interactions up to degree l + 1 with O(W) parameters; the combination layer
    concatenates the cross and deep outputs and maps them to the logit (Eq. 5). Sequences
    are mean-pooled.

    Shapes: pooled [B, F, D], dense [B, Nd] → logits [B].
    """

    def __init__(self, schema: Schema, layout: EmbeddingLayout, config: DCNConfig):
        super().__init__(schema, layout, config)
        width = (len(layout.pooled) + len(layout.sequences)) * layout.dim + self.num_dense
        self.cross = CrossNetwork(width, config.cross_layers)
        self.deep = config.mlp(width, None) if config.hidden else None  # none: the cross network alone
        self.out = nn.Linear(width + (self.deep.out_dim if self.deep is not None else 0), 1)

    def forward(self, batch: Batch, embedded: FeatureEmbeddings) -> Tensor:
        x0 = torch.cat([pool_sequences(embedded, self.layout).flatten(1), batch.dense], dim=1)
        parts = [self.cross(x0)] if self.deep is None else [self.cross(x0), self.deep(x0)]
        return self.out(torch.cat(parts, dim=1)).squeeze(-1)
