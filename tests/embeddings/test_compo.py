import math

import numpy as np

import pytest
import torch

from ctr.embeddings.budget import BudgetUnreachableError
from ctr.embeddings.compo import CompoConfig, CompoEmbedding, compo_floats
from ctr.errors import RecipeError
from ctr.recipe import recipe_from_dict
from tests.embeddings.schemas import batch, schema

ITEM = torch.tensor(0)


def vectors(method, ids):
    return method.embed_ids(torch.zeros_like(ids), ids)


@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
def test_ids_sharing_a_quotient_or_a_remainder_get_different_vectors(operation):
    method = CompoEmbedding(schema(), CompoConfig(dim=8, budget=0.1, operation=operation))
    m = int(method.remainder[0])
    assert m > 1
    same_quotient = torch.tensor([2 * m, 2 * m + 1])
    same_remainder = torch.tensor([m + 1, 2 * m + 1])
    for pair in (same_quotient, same_remainder):
        out = vectors(method, pair)
        assert not torch.allclose(out[0], out[1])
    x = 2 * m + 1
    q, r = method.weight[int(method.q_start[0]) + x // m], method.weight[int(method.r_start[0]) + x % m]
    want = {"mult": q * r, "add": q + r, "concat": torch.cat([q, r])}[operation]
    torch.testing.assert_close(vectors(method, torch.tensor([x]))[0], want)


def test_remainder_size_is_the_smallest_that_fits_and_small_tables_stay_full():
    method = CompoEmbedding(schema({"item": 1000, "user": 600, "tags": 6}), CompoConfig(dim=8, budget=0.2))
    m = int(method.remainder[0])
    assert math.ceil(6 / m) + m >= 6  # splitting tags would not save rows
    assert (method.remainder[:2] == m).all() and int(method.remainder[2]) == 0
    vocab = np.array([1000.0, 600.0, 6.0])
    limit = 0.2 * method.full_bytes() - 8 * 3
    assert compo_floats(vocab, np.array([m - 1]), 8, False)[0] * 4 > limit
    assert method.memory_bytes() == method.weight.numel() * 4 + 8 * 3 <= 0.2 * method.full_bytes()
    assert method.weight.shape[0] == math.ceil(1000 / m) + m + math.ceil(600 / m) + m + 6


def test_forward_pools_and_gradients_are_sparse():
    method = CompoEmbedding(schema(), CompoConfig(dim=8, budget=0.2))
    out = method(batch())
    assert out.pooled.shape == (8, 3, 8)
    (out.pooled.sum() + out.sequences["hist"].sum()).backward()
    assert method.weight.grad.is_sparse and method.sparse_parameters() == [method.weight]


def test_bad_compo_settings_are_one_line_errors():
    with pytest.raises(RecipeError, match=r"^embedding\.operation: expected one of"):
        recipe_from_dict({"embedding": {"method": "compo", "budget": 0.1, "operation": "max"}})
    with pytest.raises(RecipeError, match=r"^embedding: operation concat needs an even dim"):
        recipe_from_dict({"embedding": {"method": "compo", "budget": 0.1, "dim": 7, "operation": "concat"}})
    with pytest.raises(BudgetUnreachableError, match=r"smallest budget it reaches is 0\.0\d+$") as err:
        CompoEmbedding(schema(), CompoConfig(dim=8, budget=0.01))
    assert 0.01 < err.value.min_budget < 0.2
