import math

import pytest
import torch

from ctr.embeddings.robe import RobeConfig, RobeEmbedding
from ctr.embeddings.storage import SEED_BYTES, hashed_table_starts
from ctr.errors import RecipeError
from ctr.recipe import recipe_from_dict
from tests.embeddings.schemas import batch, schema


@pytest.mark.parametrize("budget, block", [(0.5, 1), (0.1, 1), (0.01, 4)])
def test_stored_floats_are_the_budget(budget, block):
    method = RobeEmbedding(schema(), RobeConfig(dim=16, budget=budget, block=block))
    seeds = SEED_BYTES * (16 // block + 16)
    assert method.array.numel() == math.floor((budget * method.full_bytes() - seeds) / 4)
    assert method.memory_bytes() == method.array.numel() * 4 + seeds <= budget * method.full_bytes()
    assert list(method.parameters()) == [method.array]


def test_two_features_ids_land_in_one_array():
    method = RobeEmbedding(schema(), RobeConfig(dim=8, budget=0.1))
    ids = torch.arange(2, 600)
    item, _ = method.positions(torch.zeros_like(ids), ids)
    user, _ = method.positions(torch.ones_like(ids), ids)
    size = method.array.shape[0]
    assert item.max() < size and user.max() < size
    assert (item != user).float().mean() > 0.95  # same raw id, different tables: different offsets
    shared = set(item.flatten().tolist()) & set(user.flatten().tolist())
    assert len(shared) > 0.5 * size  # both tables spread over the same array
    out = method(batch())
    out.pooled[:, :2].sum().backward()  # item and user only
    touched = method.array.grad.coalesce().indices()[0]
    assert touched.numel() > 0 and touched.max() < size


def test_elements_are_signed_reads_of_hashed_blocks():
    method = RobeEmbedding(schema(), RobeConfig(dim=8, budget=0.2, block=4))
    ids = torch.arange(2, 200)
    feature = torch.zeros_like(ids)
    positions, signs = method.positions(feature, ids)
    size = method.array.shape[0]
    assert torch.equal(positions[:, 1:4], (positions[:, :1] + torch.arange(1, 4)) % size)  # a block is contiguous
    assert set(signs.unique().tolist()) == {-1, 1}
    want = method.array[positions, 0] * signs
    torch.testing.assert_close(method.embed_ids(feature, ids), want)
    again, _ = method.positions(feature, ids)
    assert torch.equal(positions, again)


def test_bad_block_is_a_recipe_error():
    with pytest.raises(RecipeError, match=r"^embedding\.block: 3 must divide dim 16"):
        recipe_from_dict({"embedding": {"method": "robe", "budget": 0.1, "block": 3}})


def test_tables_past_the_hashes_prime_are_refused():
    assert hashed_table_starts("robe", {"a": 5, "b": 7}).tolist() == [0, 5]
    with pytest.raises(RecipeError, match=r"robe hashes global rows mod p = 2\^31 - 1.*2,147,483,648 rows"):
        hashed_table_starts("robe", {"a": 2**30, "b": 2**30})
