"""ctr.embeddings: the embedding collection and every compression method.

Importing this package registers the built-in methods in ``ctr.registry.EMBEDDINGS``.
"""

from ctr.embeddings import adaptemb, compo, dedup, dhe, dnis, full, hashing, mgqe, optembed, robe, ttrec, unified  # noqa: F401  (register the methods)
from ctr.embeddings.base import EmbeddingMethod
from ctr.embeddings.types import EmbeddingLayout, FeatureEmbeddings

__all__ = ["EmbeddingMethod", "EmbeddingLayout", "FeatureEmbeddings"]
