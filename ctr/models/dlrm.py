"""``dlrm``: Deep Learning Recommendation Model (Naumov et al., 2019, arXiv:1906.00091)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ctr.batch import Batch
from ctr.embeddings.types import EmbeddingLayout, FeatureEmbeddings
from ctr.errors import RecipeError
from ctr.models.base import CTRModel, pool_sequences
from ctr.models.layers import MLP, check_widths
from ctr.recipe import ModelConfig
from ctr.registry import MODELS
from ctr.schema import Schema


@dataclass
class DLRMConfig(ModelConfig):
    """DLRM settings.

    Args:
        bottom_mlp: hidden widths of the dense-feature MLP (a final layer of width D is added);
            the default is the paper's Criteo Kaggle setting 13-512-256-64-D.
        top_mlp: hidden widths of the MLP over the interactions (a logit layer is added);
            the default is the paper's 512-256-1.
        interaction_self: include each vector's dot product with itself.
    """

    name: str = "dlrm"
    bottom_mlp: list[int] = field(default_factory=lambda: [512, 256, 64])
    top_mlp: list[int] = field(default_factory=lambda: [512, 256])
    interaction_self: bool = False

    def __post_init__(self) -> None:
        check_widths(self, "bottom_mlp", "top_mlp")


@MODELS.register("dlrm", config=DLRMConfig)
class DLRM(CTRModel):
    """DLRM: bottom MLP on dense features, pairwise dot products, top MLP.

    The dense features go through the bottom MLP to a D-dim vector x; with the F feature
    embeddings e_1..e_F, the interaction is every dot product <v_i, v_j> (i < j) of
    [x, e_1..e_F], concatenated with x and fed to the top MLP (paper §2.2, "dot" interaction).
    Sequence features are mean-pooled into one vector each. Without numeric features the
    bottom MLP is dropped and only the embeddings interact.

    Shapes: dense [B, Nd], pooled [B, F, D] → logits [B].
    """

    def __init__(self, schema: Schema, layout: EmbeddingLayout, config: DLRMConfig):
        super().__init__(schema, layout, config)
        d = layout.dim
        self.bottom = MLP(self.num_dense, config.bottom_mlp + [d], act="relu") if self.num_dense else None
        vectors = len(layout.pooled) + len(layout.sequences) + (1 if self.bottom else 0)
        offset = 0 if config.interaction_self else 1
        rows, cols = torch.triu_indices(vectors, vectors, offset=offset)
        self.register_buffer("pairs", rows * vectors + cols, persistent=False)
        top_in = rows.numel() + (d if self.bottom else 0)
        if top_in == 0:  # one vector has no pair: the top MLP would read nothing, a constant
            raise RecipeError("model: dlrm on one sparse feature and no numeric one has nothing to interact; set "
                              "model.interaction_self: true (⟨e, e⟩) or add features")
        self.top = MLP(top_in, config.top_mlp, act="relu", out_dim=1)

    def forward(self, batch: Batch, embedded: FeatureEmbeddings) -> Tensor:
        return self.top(self.interaction(batch, embedded)).squeeze(-1)

    def interaction(self, batch: Batch, embedded: FeatureEmbeddings) -> Tensor:
        """The top MLP's input: x, then ⟨v_i, v_j⟩ for i < j (i ≤ j with ``interaction_self``)
        over [x, e_1..e_F] in row-major order: [B, D + pairs] (without x when there is no x)."""
        fields = pool_sequences(embedded, self.layout)  # [B, F, D]
        if self.bottom is not None:
            x = self.bottom(batch.dense)  # [B, D]
            fields = torch.cat([x.unsqueeze(1), fields], dim=1)
        dots = torch.bmm(fields, fields.transpose(1, 2))  # [B, V, V]
        pairs = dots.flatten(1).index_select(1, self.pairs)  # [B, V(V-1)/2], V(V+1)/2 with interaction_self
        return torch.cat([x, pairs], dim=1) if self.bottom is not None else pairs
