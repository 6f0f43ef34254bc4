"""``dcnv2``: DCN-V2 (Wang et al., WWW 2021, arXiv:2008.13535)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from ctr.batch import Batch
from ctr.embeddings.types import EmbeddingLayout, FeatureEmbeddings
from ctr.models.base import CTRModel, pool_sequences
from ctr.models.layers import CrossNetworkV2, MLPConfig
from ctr.recipe import ModelConfig
from ctr.registry import MODELS
from ctr.schema import Schema
from ctr.typed import require_at_least


@dataclass
class DCNv2Config(MLPConfig, ModelConfig):
    """DCN-V2 settings.

    Args:
        structure: ``parallel`` (cross and deep side by side, outputs concatenated) or
            ``stacked`` (the deep network on top of the cross network), paper Fig. 1.
        cross_layers: number of cross layers.
        low_rank: rank r of W = U Vᵀ (``None``: full-rank W, the paper's DCN-V2).
        experts: low-rank experts per layer (> 1: the mixture DCN-Mix, needs low_rank).
        hidden, activation, dropout, batch_norm: the deep network (``hidden: []``: none, the
            cross network alone under either structure).
    """

    name: str = "dcnv2"
    structure: Literal["parallel", "stacked"] = "parallel"
    cross_layers: int = 3
    low_rank: int | None = None
    experts: int = 1
    hidden: list[int] = field(default_factory=lambda: [1024, 1024])

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "cross_layers", "experts")
        if self.low_rank is not None:
            require_at_least(self, 1, "low_rank")
        if self.experts > 1 and self.low_rank is None:
            raise ValueError(f"experts: {self.experts} (DCN-Mix) needs model.low_rank, the rank of each expert")


@MODELS.register("dcnv2", config=DCNv2Config)
class DCNv2(CTRModel):
    """DCN-V2: cross layers with a full (or low-rank, or mixture of low-rank) weight matrix.

    x_0 stacks the embeddings and the numeric values; each cross layer computes
    ``x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l`` (paper Eq. 1), which unlike DCN's rank-one
    w_l can weigh every pair of input units separately. ``parallel`` concatenates the cross
    and deep outputs before the logit; ``stacked`` feeds the cross output to the deep
    network. Sequences are mean-pooled.

    Shapes: pooled [B, F, D], dense [B, Nd] → logits [B].
    """

    def __init__(self, schema: Schema, layout: EmbeddingLayout, config: DCNv2Config):
        super().__init__(schema, layout, config)
        width = (len(layout.pooled) + len(layout.sequences)) * layout.dim + self.num_dense
        self.cross = CrossNetworkV2(width, config.cross_layers, config.low_rank, config.experts)
        self.deep = config.mlp(width, None) if config.hidden else None  # none: the cross network alone
        if self.deep is None:
            self.out = nn.Linear(width, 1)
        else:
            stacked = config.structure == "stacked"
            self.out = nn.Linear(self.deep.out_dim if stacked else width + self.deep.out_dim, 1)

    def forward(self, batch: Batch, embedded: FeatureEmbeddings) -> Tensor:
        x0 = torch.cat([pool_sequences(embedded, self.layout).flatten(1), batch.dense], dim=1)
        crossed = self.cross(x0)
        if self.deep is None:
            return self.out(crossed).squeeze(-1)
        if self.config.structure == "stacked":
            return self.out(self.deep(crossed)).squeeze(-1)
        return self.out(torch.cat([crossed, self.deep(x0)], dim=1)).squeeze(-1)
