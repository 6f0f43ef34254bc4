"""``autoint``: AutoInt (Song et al., CIKM 2019, arXiv:1810.11921)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ctr.batch import Batch
from ctr.embeddings.types import EmbeddingLayout, FeatureEmbeddings
from ctr.models.base import CTRModel, field_vectors
from ctr.models.layers import InteractingLayer, NumericEmbedding
from ctr.recipe import ModelConfig
from ctr.registry import MODELS
from ctr.schema import Schema
from ctr.typed import require_at_least


@dataclass
class AutoIntConfig(ModelConfig):
    """AutoInt settings (defaults: the paper's §5.1: 3 layers, 2 heads, d' = 32).

    Args:
        layers: number of interacting layers.
        heads: attention heads H per layer.
        head_dim: d', the width of each head (a layer outputs H·d' per field).
        residual: add the residual projection W_Res e_m (paper Eq. 8).
        scale: divide attention scores by √d' (scaled dot-product; the paper's Eq. 5 does not;
            the authors' code does, shichence/AutoInt ``model.py``, ``multihead_attention``).
        projection_relu: a bias and a ReLU on the Q, K, V and residual projections (the
            authors' ``multihead_attention``; not in the paper).
        layer_norm: layer normalisation after every interacting layer (the authors'
            ``multihead_attention`` ends with ``normalize``; not in the paper).
        embedding_dropout: dropout on the field vectors before the interacting layers (the
            authors' ``_init_graph``, ``dropout_keep_prob[1]``; 0 in their default run).
    """

    name: str = "autoint"
    layers: int = 3
    heads: int = 2
    head_dim: int = 32
    residual: bool = True
    scale: bool = True
    projection_relu: bool = False
    layer_norm: bool = False
    embedding_dropout: float = 0.0

    def __post_init__(self) -> None:
        require_at_least(self, 1, "layers", "heads", "head_dim")
        if not 0 <= self.embedding_dropout < 1:
            raise ValueError(f"embedding_dropout must be in [0, 1), got {self.embedding_dropout}")


@MODELS.register("autoint", config=AutoIntConfig)
class AutoInt(CTRModel):
    """AutoInt: stacked multi-head self-attention over the fields, then a linear logit.

    Every feature becomes one field vector (paper §4.3, Eq. 2–4): categorical ids their
    embedding, multi-valued (sequence) features the mean of theirs, and a numeric feature
    x_m the vector x_m·v_m. Interacting layers (``InteractingLayer``) let every field attend to every
    other; by the paper's analysis (§4.7) the highest order of the combinations grows
    exponentially with the number of layers. The output layer is
    ``σ(wᵀ(e_1^Res ⊕ … ⊕ e_M^Res) + b)`` (Eq. 9). ``projection_relu``, ``layer_norm`` and
    ``embedding_dropout`` turn on what the authors' code (shichence/AutoInt ``model.py``) adds
    to the paper; all are off by default (AutoInt+'s DNN reads the same, dropped-out field vectors).

    Shapes: pooled [B, F, D], dense [B, Nd] → logits [B].
    """

    def __init__(self, schema: Schema, layout: EmbeddingLayout, config: AutoIntConfig):
        super().__init__(schema, layout, config)
        self.fields = len(layout.pooled) + len(layout.sequences) + self.num_dense
        self.numeric = NumericEmbedding(self.num_dense, layout.dim) if self.num_dense else None
        width = config.heads * config.head_dim
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.interacting = nn.Sequential(
            *(InteractingLayer(layout.dim if i == 0 else width, config.head_dim, config.heads, config.residual,
                               config.scale, config.projection_relu, config.layer_norm)
              for i in range(config.layers))
        )
        self.out = nn.Linear(self.fields * width, 1)

    def forward(self, batch: Batch, embedded: FeatureEmbeddings) -> Tensor:
        fields = self.embedding_dropout(field_vectors(embedded, self.layout, self.numeric, batch.dense))  # [B, M, D]
        return self.attention_logit(fields)

    def attention_logit(self, fields: Tensor) -> Tensor:
        """The logit of the interacting layers and the output layer: [B, M, D] → [B]."""
        return self.out(self.interacting(fields).flatten(1)).squeeze(-1)
