"""ctr.embeddings: the embedding-method contract and every compression method.

Built-in methods register themselves when ``ctr.registry.EMBEDDINGS`` looks their name up
(each method is a module of this package).
"""

from ctr.embeddings.base import EmbeddingMethod
from ctr.embeddings.types import EmbeddingLayout, FeatureEmbeddings

__all__ = ["EmbeddingMethod", "EmbeddingLayout", "FeatureEmbeddings"]
