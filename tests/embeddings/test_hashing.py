import pytest
import torch

from ctr.embeddings.hashing import HashConfig, HashEmbedding
from ctr.embeddings.storage import SEED_BYTES, universal_hash
from ctr.errors import RecipeError
from ctr.recipe import recipe_from_dict
from tests.embeddings.schemas import VOCABS, batch, schema


@pytest.mark.parametrize("budget", [0.5, 0.1, 0.01])
def test_hash_stores_no_more_than_its_budget_and_uses_most_of_it(budget):
    method = HashEmbedding(schema(), HashConfig(dim=16, budget=budget))
    limit = budget * method.full_bytes()
    assert method.memory_bytes() <= limit
    assert method.memory_bytes() >= 0.9 * limit
    stored = method.weight.numel() * 4 + SEED_BYTES * method.seeds.shape[0]
    assert method.memory_bytes() == stored
    for t, name in enumerate(method.table_names):  # each table gets its vocabulary's share
        assert abs(int(method.table_buckets[t]) - budget * VOCABS[name]) <= 1 + 0.02 * VOCABS[name]


def test_hash_maps_ids_into_their_own_table_and_spreads_them():
    method = HashEmbedding(schema(), HashConfig(dim=4, budget=0.1))
    ids = torch.arange(2, VOCABS["item"])
    item = method.rows_of(torch.zeros_like(ids), ids)
    start, buckets = int(method.table_start[0]), int(method.table_buckets[0])
    assert ((item >= start) & (item < start + buckets)).all()
    assert torch.equal(item, method.rows_of(torch.zeros_like(ids), ids))  # deterministic
    assert torch.equal(item, method.rows_of(torch.full_like(ids, 2), ids))  # hist shares item's table
    load = torch.bincount(item - start, minlength=buckets)
    assert (load > 0).all() and load.max() <= 3 * len(ids) / buckets  # 2-universal: no bucket hoards ids


def test_universal_hash_is_the_carter_wegman_formula():
    ids = torch.tensor([0, 5, 2**31 + 3, 123456789])
    got = universal_hash(ids, torch.tensor(7), torch.tensor(11), 13)
    want = [((7 * (x % (2**31 - 1)) + 11) % (2**31 - 1)) % 13 for x in ids.tolist()]
    assert got.tolist() == want
    # every int64 id, with the largest seeds: exact, as Python's unbounded integers compute it
    p, a, b = 2**31 - 1, 2**31 - 2, 2**31 - 2
    large = [p - 1, p, 2**32 + 7, 2**40 + 1, 2**62 + 3, 2**63 - 2, 2**63 - 1]
    for buckets in (2, 10**6, p):
        got = universal_hash(torch.tensor(large), torch.tensor(a), torch.tensor(b), buckets)
        assert got.tolist() == [((a * x + b) % p) % buckets for x in large]


def test_hash_forward_and_sparse_gradient():
    method = HashEmbedding(schema(), HashConfig(dim=4, budget=0.2))
    out = method(batch())
    assert out.pooled.shape == (8, 3, 4) and out.sequences["hist"].shape[2] == 4
    (out.pooled.sum() + out.sequences["hist"].sum()).backward()
    assert method.weight.grad.is_sparse


def test_hash_needs_a_budget_that_holds_a_row_per_table():
    with pytest.raises(RecipeError, match=r"^embedding\.budget: hash sizes its storage from a budget"):
        HashEmbedding(schema(), HashConfig(dim=16))
    with pytest.raises(RecipeError, match=r"^embedding\.budget: 0\.0001 is too small for hash"):
        HashEmbedding(schema(), HashConfig(dim=16, budget=0.0001))


def test_hash_recipe_block_is_validated():
    recipe = recipe_from_dict({"embedding": {"method": "hash", "dim": 8, "budget": 0.25}})
    assert type(recipe.embedding) is HashConfig and recipe.embedding.budget == 0.25
    with pytest.raises(RecipeError, match=r"^embedding\.probes: unknown key"):
        recipe_from_dict({"embedding": {"method": "hash", "probes": 2}})


def test_the_smallest_budget_named_for_one_table_is_reached():
    """A rounding error of budget × bytes refused the minimum it had just named."""
    from ctr.embeddings.budget import BudgetUnreachableError, hashed_rows

    with pytest.raises(BudgetUnreachableError) as refused:
        hashed_rows({"t": 625}, 8, 1e-6)
    assert hashed_rows({"t": 625}, 8, float(refused.value.shown_min)) == {"t": 1}
