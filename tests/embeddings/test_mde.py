import numpy as np
import pytest
import torch

from ctr.embeddings.budget import BudgetUnreachableError
from ctr.embeddings.mde import MDEConfig, MDEmbedding, mixed_dims
from tests.embeddings.schemas import schema

BIG = {"item": 200000, "user": 100000, "tags": 1000}


def test_dims_fall_with_vocabulary_size_as_powers_of_two():
    method = MDEmbedding(schema(BIG), MDEConfig(dim=16, budget=0.1))
    dims = dict(zip(method.table_names, method.dims))
    assert dims["tags"] == 16 and dims["user"] <= dims["tags"] and dims["item"] <= dims["user"] < 16
    assert all(d & (d - 1) == 0 for d in method.dims)
    assert method.memory_bytes() <= 0.1 * method.full_bytes()


def test_the_budget_sets_alpha_and_a_larger_budget_keeps_wider_rows():
    small = MDEmbedding(schema(BIG), MDEConfig(dim=16, budget=0.1))
    large = MDEmbedding(schema(BIG), MDEConfig(dim=16, budget=0.5))
    assert large.alpha < small.alpha and sum(large.dims) > sum(small.dims)
    assert large.memory_bytes() <= 0.5 * large.full_bytes()
    expected = (np.array(list(BIG.values())) * large.dims).sum() + sum(d * 16 for d in large.dims if d < 16)
    assert large.memory_bytes() == 4 * expected  # rows + projections, nothing else stored


def test_power_rule_by_hand():
    vocab = np.array([100.0, 1600.0])
    assert mixed_dims(vocab, 16, 0.5, round_dim=False).tolist() == [16, 4]  # 16 · (100/1600)^0.5
    assert mixed_dims(vocab, 16, 0.4, round_dim=True).tolist() == [16, 4]  # 5.28 → 2^round(2.40)


def test_power_of_two_rounding_starts_from_the_integer_dimension():
    """As the paper's code (DLRM md_solver) and the artifact's ``_md_solver``: d_t is first
    rounded to an integer, then to a power of two: 2.7 → 3 → 4 and 1.45 → 1 → 1."""
    vocab = np.array([1.0, 16 / 2.7, 16 / 1.45])
    assert mixed_dims(vocab, 16, 1.0, round_dim=True).tolist() == [16, 4, 1]


def test_narrow_rows_are_projected_to_d():
    method = MDEmbedding(schema(BIG), MDEConfig(dim=16, budget=0.1))
    ids = torch.tensor([2, 3, 4])
    out = method.embed_ids(torch.zeros_like(ids), ids)
    assert out.shape == (3, 16)
    torch.testing.assert_close(out, method.rows.tables[0][ids] @ method.rows.projections["0"])


def test_tables_close_in_size_reach_one_dimension_when_the_budget_asks():
    """Tables 1.1× and 1.2× the smallest still had 8 and 4 dimensions at the old α ceiling
    of 8: a budget their one-dimension rows fit was refused with a minimum of 0.561."""
    vocabs = {"item": 120000, "user": 110000, "tags": 100000}
    method = MDEmbedding(schema(vocabs), MDEConfig(dim=16, budget=0.4))
    assert method.memory_bytes() <= 0.4 * method.full_bytes()
    one = (100000 * 16 + 230000 + 2 * 16) / (330000 * 16)  # the rows at 16, 1 and 1 dims + projections
    with pytest.raises(BudgetUnreachableError) as refused:
        MDEmbedding(schema(vocabs), MDEConfig(dim=16, budget=0.3))
    assert refused.value.min_budget == pytest.approx(one)
