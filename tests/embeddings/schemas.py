"""Hand-built schemas and batches for embedding tests (no data pipeline needed)."""

from __future__ import annotations

import numpy as np
import torch

from ctr.batch import JaggedFeatures
from ctr.schema import FeatureInfo, FeatureSpec, Schema

VOCABS = {"item": 1000, "user": 600, "tags": 40}


def schema(vocabs: dict[str, int] | None = None) -> Schema:
    """item and user (categorical), hist (a per-position sequence sharing item's table), tags
    (a mean-pooled sequence); counts follow a Zipf law so frequency groups differ."""
    vocabs = vocabs or VOCABS
    features = [
        FeatureInfo(FeatureSpec(name="item"), vocab_size=vocabs["item"], table="item"),
        FeatureInfo(FeatureSpec(name="user"), vocab_size=vocabs["user"], table="user"),
        FeatureInfo(FeatureSpec(name="hist", kind="sequence", share_with="item", pooling="none"),
                    vocab_size=vocabs["item"], table="item"),
        FeatureInfo(FeatureSpec(name="tags", kind="sequence", pooling="mean"), vocab_size=vocabs["tags"], table="tags"),
    ]
    counts = {t: (1e5 / np.arange(1, n + 1) ** 1.1).astype(np.int64) for t, n in vocabs.items()}
    for c in counts.values():
        c[:2] = 0  # padding and OOV never counted
    return Schema(features=features, label="y", counts=counts)


def batch(size: int = 8, seed: int = 0, vocabs: dict[str, int] | None = None) -> JaggedFeatures:
    """A random batch for ``schema()``: one id for item and user, 0-4 ids for hist and tags."""
    vocabs = vocabs or VOCABS
    gen = torch.Generator().manual_seed(seed)
    lengths = [torch.ones(size, dtype=torch.int64), torch.ones(size, dtype=torch.int64),
               torch.randint(0, 5, (size,), generator=gen), torch.randint(1, 5, (size,), generator=gen)]
    tables = ["item", "user", "item", "tags"]
    values = [torch.randint(2, vocabs[t], (int(n.sum()),), generator=gen) for t, n in zip(tables, lengths)]
    return JaggedFeatures.from_lengths(["item", "user", "hist", "tags"], torch.cat(values), torch.cat(lengths))
