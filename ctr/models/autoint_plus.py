"""``autoint_plus``: AutoInt+ (Song et al., CIKM 2019, arXiv:1810.11921, §5.5)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ctr.batch import Batch
from ctr.embeddings.types import EmbeddingLayout, FeatureEmbeddings
from ctr.models.autoint import AutoInt, AutoIntConfig
from ctr.models.base import field_vectors
from ctr.models.layers import MLPConfig
from ctr.registry import MODELS
from ctr.schema import Schema


@dataclass
class AutoIntPlusConfig(AutoIntConfig, MLPConfig):
    """AutoInt+ settings: AutoInt's, plus the parallel DNN.

    Args:
        hidden: DNN hidden widths (default 400-400: the authors' AutoInt+ run,
            shichence/AutoInt ``test_code.sh``, ``--deep_layers "[400, 400]"``).
        activation, dropout, batch_norm: of the DNN.
    """

    name: str = "autoint_plus"
    hidden: list[int] = field(default_factory=lambda: [400, 400])

    def __post_init__(self) -> None:  # AutoIntConfig's comes first in the bases: both checks
        AutoIntConfig.__post_init__(self)
        MLPConfig.__post_init__(self)


@MODELS.register("autoint_plus", config=AutoIntPlusConfig)
class AutoIntPlus(AutoInt):
    """AutoInt+: AutoInt jointly trained with a feed-forward network over the same fields.

    The DNN reads the concatenated field vectors (the same embeddings the interacting layers
    read) and its logit is added to AutoInt's, so implicit interactions complement the
    explicit ones (paper §5.5, "Integrating Implicit Interactions").

    Shapes: pooled [B, F, D], dense [B, Nd] → logits [B].
    """

    def __init__(self, schema: Schema, layout: EmbeddingLayout, config: AutoIntPlusConfig):
        super().__init__(schema, layout, config)
        width = self.fields * layout.dim
        self.dnn = config.mlp(width)

    def forward(self, batch: Batch, embedded: FeatureEmbeddings) -> Tensor:
        fields = self.embedding_dropout(field_vectors(embedded, self.layout, self.numeric, batch.dense))  # [B, M, D]
        return self.attention_logit(fields) + self.dnn(fields.flatten(1)).squeeze(-1)
