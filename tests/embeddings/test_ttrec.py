import pytest
import torch

from ctr.embeddings.budget import ComputeLimitError
from ctr.embeddings.ttrec import TTRecConfig, TTRecEmbedding, row_factors, stored_floats, three_factors
from tests.embeddings.schemas import batch, schema


def test_factorisations():
    assert three_factors(16) == (2, 2, 4) and three_factors(8) == (2, 2, 2)
    for vocab in (1000, 600, 10_131_227):
        v1, v2, v3 = row_factors(vocab)
        assert v1 * v2 * v3 >= vocab and v1 * v2 * (v3 - 1) < vocab


def test_dim_factors_are_the_artifacts_in_ascending_order():
    """The artifact's ``_get_decomp_dim`` (methods/scheduler/tensortrain.py) sorts the
    factors, so the middle core gets the middle factor: 32 → 2·4·4, not 4·2·4."""
    assert three_factors(32) == (2, 4, 4) and three_factors(24) == (2, 3, 4)
    assert three_factors(64) == (4, 4, 4) and three_factors(128) == (4, 4, 8)
    assert three_factors(12) == (2, 2, 3)


def test_rows_are_the_tensor_train_product():
    method = TTRecEmbedding(schema(), TTRecConfig(dim=16, budget=0.2))
    core = method.core_of_table[0]
    assert core >= 0  # item (1000 ids) is a tensor train
    first, middle, last = (method.cores[3 * core + i] for i in range(3))
    (d1, d2, d3), rank = method.dims, method.rank
    _, v2, v3 = method.row_factors[0]
    ids = torch.tensor([0, 5, 123, 999, 123])
    got = method.embed_ids(torch.zeros_like(ids), ids)
    for x, row in zip(ids.tolist(), got):
        a = first[x // (v2 * v3)].view(d1, rank)
        b = middle[(x // v3) % v2].view(rank, d2, rank)
        c = last[x % v3].view(rank, d3)
        want = torch.einsum("ir,rjs,sk->ijk", a, b, c).reshape(-1)
        torch.testing.assert_close(row, want)


def test_rank_is_the_largest_that_fits_and_small_tables_keep_rows():
    vocabs = {"item": 1000, "user": 600, "tags": 40}
    method = TTRecEmbedding(schema(vocabs), TTRecConfig(dim=16, budget=0.2))
    limit = 0.2 * method.full_bytes()
    assert stored_floats(vocabs, 16, method.rank) * 4 == method.memory_bytes() <= limit
    assert stored_floats(vocabs, 16, method.rank + 1) * 4 > limit
    assert method.core_of_table[2] == -1 and method.weight.shape[0] == 40  # tags: cores would not save
    out = method(batch())
    out.pooled.sum().backward()
    assert method.cores[0].grad is not None and method.weight.grad.is_sparse


def test_a_rank_past_the_limit_is_refused():
    with pytest.raises(ComputeLimitError, match=r"TT rank \d+ > 4"):
        TTRecEmbedding(schema(), TTRecConfig(dim=16, budget=0.2, max_rank=4))


def test_a_budget_every_table_fills_at_a_rank_within_the_limit_is_met():
    """budget 1 on small tables: every table keeps full rows from a low rank on, so a rank
    past max_rank stores nothing more; it was refused as past the compute limit."""
    vocabs = {"item": 2, "user": 3, "tags": 2}
    method = TTRecEmbedding(schema(vocabs), TTRecConfig(dim=8, budget=1.0))
    assert method.rank <= TTRecConfig.max_rank and method.memory_bytes() == method.full_bytes()
    with pytest.raises(ComputeLimitError, match=r"TT rank \d+ > 2"):  # ranks past 2 still store more here
        TTRecEmbedding(schema({"item": 1000, "user": 600, "tags": 40}), TTRecConfig(dim=16, budget=1.0, max_rank=2))
