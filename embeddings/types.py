"""What an embedding method hands to a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from ctr.schema import Schema


@dataclass(frozen=True)
class EmbeddingLayout:
    """The shape of a method's output, known before any data: what models are built from.

    Args:
        dim: D, the output dimension of every feature.
        pooled: names of the features in ``FeatureEmbeddings.pooled``, in order.
        sequences: names of the sequence features kept per position.
    """

    dim: int
    pooled: tuple[str, ...]
    sequences: tuple[str, ...]

    @classmethod
    def from_schema(cls, schema: Schema, dim: int) -> EmbeddingLayout:
        return cls(
            dim=dim,
            pooled=tuple(f.spec.name for f in schema.pooled_features),
            sequences=tuple(f.spec.name for f in schema.sequence_features),
        )


@dataclass
class FeatureEmbeddings:
    """Embeddings of one batch.

    Args:
        pooled: [B, F, D], one vector per pooled feature (layout.pooled order).
        sequences: name → [B, L, D] per-position vectors (zeros at padding).
        masks: name → bool [B, L], True at real positions.
        rows: the method's per-id vectors, ``rows(feature [N], ids [N]) -> [N, D]`` with
            ``feature`` indexing the schema's sparse features (for regularizers that act on
            the embedding rows a batch touched, e.g. DIN's mini-batch aware L2).
    """

    pooled: Tensor
    sequences: dict[str, Tensor]
    masks: dict[str, Tensor]
    rows: Callable[[Tensor, Tensor], Tensor] | None = None
