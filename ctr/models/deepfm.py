"""``deepfm``: DeepFM (Guo et al., IJCAI 2017, arXiv:1703.04247)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ctr.batch import Batch
from ctr.embeddings.types import EmbeddingLayout, FeatureEmbeddings
from ctr.models.base import CTRModel, pool_sequences
from ctr.models.layers import FactorizationMachine, MLPConfig, NumericEmbedding
from ctr.recipe import ModelConfig
from ctr.registry import MODELS
from ctr.schema import Schema


@dataclass
class DeepFMConfig(MLPConfig, ModelConfig):
    """DeepFM settings (defaults: the paper's §3.1 settings for all deep models).

    Args:
        hidden: widths of the DNN's hidden layers (paper: 400-400-400).
        activation: of the hidden layers (paper: relu).
        dropout: after each hidden layer (paper: 0.5).
        batch_norm: BatchNorm in the DNN (not in the paper).
    """

    name: str = "deepfm"
    dropout: float = 0.5


@MODELS.register("deepfm", config=DeepFMConfig)
class DeepFM(CTRModel):
    """DeepFM: an FM and a DNN sharing one embedding of every field, summed into one logit.

    ``logit = y_FM + y_DNN`` (paper Eq. 1), with
    ``y_FM = ⟨w, x⟩ + Σ_{i<j} ⟨V_i, V_j⟩ x_i x_j`` over the field vectors (Eq. 2) and
    ``y_DNN`` an MLP over their concatenation (Eq. 3–4). Categorical fields use their
    embedding; a numeric field x_i is the vector x_i·v_i (the FM's treatment of a real
    value); sequences are mean-pooled into one field each.

    Deviation: the first-order weight of an id is ⟨u_f, e_id⟩ (``FactorizationMachine``),
    stored in the shared embedding table rather than in a separate scalar table, so the model
    holds no per-id state outside the embedding method (whose bytes the compression benchmark
    counts); a numeric field's first-order term is x·⟨u_f, v_f⟩, i.e. a free weight times x.

    Shapes: pooled [B, F, D], dense [B, Nd] → logits [B].
    """

    def __init__(self, schema: Schema, layout: EmbeddingLayout, config: DeepFMConfig):
        super().__init__(schema, layout, config)
        d, sparse_fields = layout.dim, len(layout.pooled) + len(layout.sequences)
        self.numeric = NumericEmbedding(self.num_dense, d) if self.num_dense else None
        self.fm = FactorizationMachine(sparse_fields + self.num_dense, d)
        width = (sparse_fields + self.num_dense) * d
        self.dnn = config.mlp(width)

    def forward(self, batch: Batch, embedded: FeatureEmbeddings) -> Tensor:
        sparse = pool_sequences(embedded, self.layout)  # [B, F, D]
        fm, fields = self.fm.with_numeric(sparse, batch.dense, self.numeric)  # fields [B, F + Nd, D]
        return fm + self.dnn(fields.flatten(1)).squeeze(-1)
