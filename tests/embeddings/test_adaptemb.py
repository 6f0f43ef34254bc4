import numpy as np
import torch

from ctr.embeddings.adaptemb import AdaptEmbConfig, AdaptEmbedding
from ctr.embeddings.storage import SEED_BYTES
from tests.embeddings.schemas import batch, schema


def test_top_frequency_ids_get_distinct_rows_and_the_rest_share():
    s = schema()
    method = AdaptEmbedding(s, AdaptEmbConfig(dim=8, budget=0.5))
    counts = np.concatenate([s.counts[t] for t in method.table_names])
    keep = int(np.ceil(0.1 * counts.size))
    top = set(np.argsort(-counts, kind="stable")[:keep].tolist())
    assert method.frequent.numel() == keep
    item = torch.arange(1000)
    rows = method.rows_of(torch.zeros_like(item), item)
    own = int(method.own_rows[0])
    frequent = torch.tensor([x in top for x in range(1000)])  # item is table 0, first in the flat order
    assert int(frequent.sum()) == own
    assert rows[frequent].unique().numel() == own and (rows[frequent] < own).all()
    rare = rows[~frequent]
    assert (rare >= own).all() and (rare < own + int(method.buckets[0])).all()
    assert rare.unique().numel() <= int(method.buckets[0]) < (~frequent).sum()


def test_adaptemb_stores_rows_frequent_ids_and_seeds():
    method = AdaptEmbedding(schema(), AdaptEmbConfig(dim=8, budget=0.2))
    stored = method.weight.numel() * 4 + method.frequent.numel() * 4 + SEED_BYTES * 3
    assert method.memory_bytes() == stored <= 0.2 * method.full_bytes()
    assert method.frequent.dtype == torch.int32


def test_frequent_rows_shrink_when_the_budget_demands():
    method = AdaptEmbedding(schema(), AdaptEmbConfig(dim=8, budget=0.05))
    assert method.frequent.numel() < 0.1 * 1640
    assert method.frequent.numel() * (8 * 4 + 4) <= 0.5 * 0.05 * method.full_bytes()
    out = method(batch())
    out.pooled.sum().backward()
    assert method.weight.grad.is_sparse


def test_without_frequent_ids_every_id_is_hashed():
    method = AdaptEmbedding(schema(), AdaptEmbConfig(dim=8, budget=0.2, frequent_fraction=0.0))
    assert method.frequent.numel() == 0 and (method.own_rows == 0).all()
    ids = torch.arange(2, 1000)
    rows = method.rows_of(torch.zeros_like(ids), ids)
    assert (rows < int(method.buckets[0])).all()
