import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctr.embeddings.autodim import AutoDimConfig, AutoDimEmbedding, fit_dims
from ctr.embeddings.budget import BudgetUnreachableError
from ctr.embeddings.stages import Stage
from tests.embeddings.schemas import batch, schema

RETRAIN = Stage("retrain")


def test_architecture_weights_move_on_validation_batches_only():
    torch.manual_seed(0)
    method = AutoDimEmbedding(schema(), AutoDimConfig(dim=8, budget=0.5))
    assert method.config.candidates == [2, 4, 8]  # the artifact's doubling candidates at D = 8
    alpha = method.alpha.detach().clone()
    method.train()
    method(batch(size=16)).pooled.sum().backward()
    assert method.arch_parameters() == [method.alpha]  # the trainer steps α with its own optimizer
    assert all(p is not method.alpha for p in method.sparse_parameters())
    method.eval()
    optimizer = torch.optim.Adam(method.arch_parameters(), lr=0.1)
    out = method(batch(size=16, seed=1)).pooled
    method.arch_update(F.mse_loss(out, torch.ones_like(out)), optimizer)
    assert not torch.equal(method.alpha.detach(), alpha)


def test_the_retrained_model_has_the_argmax_dims_when_the_budget_allows():
    method = AutoDimEmbedding(schema(), AutoDimConfig(dim=8, budget=1.0))
    with torch.no_grad():
        method.alpha.copy_(torch.tensor([[0.0, 0.0, 5.0], [5.0, 0.0, 0.0], [0.0, 5.0, 0.0]]))
    method.begin_stage(RETRAIN)
    assert [t.shape[1] for t in method.retrained.tables] == [8, 2, 4]
    assert set(method.retrained.projections) == {"1", "2"}
    assert method.memory_bytes() == 4 * (1000 * 8 + 600 * 2 + 40 * 4 + 2 * 8 + 4 * 8)
    assert method.embed_ids(torch.tensor([0, 1]), torch.tensor([5, 6])).shape == (2, 8)


def test_a_small_budget_lowers_the_dims_of_the_largest_tables_first():
    method = AutoDimEmbedding(schema(), AutoDimConfig(dim=8, budget=0.5))
    with torch.no_grad():
        method.alpha.copy_(torch.tensor([[0.0, 0.0, 5.0]] * 3))  # every table wants D
    method.begin_stage(RETRAIN)
    dims = [t.shape[1] for t in method.retrained.tables]
    assert dims[0] < 8 and dims[2] == 8 and method.memory_bytes() <= 0.5 * method.full_bytes()


@pytest.mark.parametrize(
    ("dim", "expected"),
    [(16, [2, 4, 8, 16]), (64, [2, 4, 8, 16, 32, 64]), (24, [2, 4, 8, 16, 24]), (2, [2])],
)
def test_default_candidates_double_from_two_up_to_the_dim(dim, expected):
    """The artifact's ``get_dim_candidates``: 2, 4, 8, ... doubling, the last replaced by D."""
    assert AutoDimConfig(dim=dim, budget=0.5).candidates == expected


def test_fit_dims_by_hand():
    vocab = np.array([100.0, 10.0])
    # all at 8: 880 floats; limit 600 floats: item drops to 4 (+ a 4 x 8 projection) → 400 + 32 + 80
    assert fit_dims(vocab, [2, 2], [2, 4, 8], 8, 600 * 4) == [1, 2]


TINY_TAGS = {"item": 1000, "user": 600, "tags": 5}  # tags: fewer ids than D = 16


def test_a_table_of_fewer_ids_than_d_is_cheapest_unprojected_so_the_smallest_budget_counts_it_so():
    """At candidates [8, 16] the 5-id table stores 80 floats at D and 168 at 8 (40 + its 8 × 16
    projection): the smallest budget keeps it at D (0.5115 of the full bytes), not every table
    at 8 (0.5150, which refused 0.513 naming 0.515)."""
    config = AutoDimConfig(dim=16, budget=0.513, candidates=[8, 16])
    method = AutoDimEmbedding(schema(TINY_TAGS), config)
    with torch.no_grad():
        method.alpha.copy_(torch.tensor([[0.0, 5.0], [0.0, 5.0], [5.0, 0.0]]))  # tags wants 8
    method.begin_stage(RETRAIN)
    assert [t.shape[1] for t in method.retrained.tables] == [8, 8, 16]
    assert method.memory_bytes() <= 0.513 * method.full_bytes()
    with pytest.raises(BudgetUnreachableError, match=r"smallest budget it reaches is 0\.512$"):
        AutoDimEmbedding(schema(TINY_TAGS), AutoDimConfig(dim=16, budget=0.5, candidates=[8, 16]))


def test_fit_dims_moves_a_table_only_to_a_dim_that_stores_fewer_bytes():
    vocab = np.array(list(TINY_TAGS.values()), dtype=np.float64)
    limit = 0.513 * 1605 * 16 * 4
    # tags at 8 (168 floats) goes to 16 (80), the one move of it that saves bytes
    assert fit_dims(vocab, [1, 1, 0], [8, 16], 16, limit) == [0, 0, 1]
    # from D, tags skips 8 and 4 (168 and 84 floats, more than its 80 at D) for 2 (42)
    assert fit_dims(np.array([1000.0, 5.0]), [3, 3], [2, 4, 8, 16], 16, 2100 * 4) == [0, 0]


def test_temperature_anneals_to_its_floor():
    method = AutoDimEmbedding(schema(), AutoDimConfig(dim=8, budget=0.5, temperature_decay=0.1))
    method.step.fill_(5)
    assert method.temperature() == pytest.approx(0.5)
    method.step.fill_(100)
    assert method.temperature() == 0.01


def test_the_annealing_step_counts_training_steps_not_lookups():
    """DIN's ``l2_reg`` looks the step's rows up again (``FeatureEmbeddings.rows``) after the
    forward: each training step advanced τ's schedule by two."""
    method = AutoDimEmbedding(schema(), AutoDimConfig(dim=8, budget=0.5)).train()
    out = method(batch(size=16))
    out.rows(torch.tensor([0, 1]), torch.tensor([5, 6]))
    assert int(method.step) == 1


def test_each_occurrence_is_mapped_by_its_own_table_s_linear_map():
    """Grouping the ids by table gives the per-occurrence mixture of the search stage."""
    torch.manual_seed(0)
    method = AutoDimEmbedding(schema(), AutoDimConfig(dim=8, budget=0.5)).eval()
    feature, ids = torch.tensor([0, 1, 3, 0, 2, 1, 3]), torch.tensor([5, 7, 3, 9, 5, 2, 1])
    tables = method.feature_table[feature]
    rows = method.row_start[tables] + ids
    weights = method.mixture()[tables]
    expected = sum(
        weights[:, c : c + 1]
        * method.norms[c](torch.einsum("nd,nde->ne", table[rows], method.maps[c][tables]) + method.map_bias[c][tables])
        for c, table in enumerate(method.candidate_tables)
    )
    torch.testing.assert_close(method.embed_ids(feature, ids), expected)


def test_the_mixture_is_a_gumbel_softmax_at_the_annealed_temperature():
    """softmax((log softmax(α) + g) / τ) with Gumbel noise g = −log(−log U) drawn afresh on each
    training call; evaluation draws none."""
    method = AutoDimEmbedding(schema(), AutoDimConfig(dim=8, budget=0.5, temperature_decay=0.05))
    with torch.no_grad():
        method.alpha.normal_(generator=torch.Generator().manual_seed(0))
    method.step.fill_(10)
    tau = 0.5
    torch.manual_seed(3)
    gumbel = -torch.log(-torch.log(torch.rand_like(method.alpha)))
    torch.manual_seed(3)
    noisy = method.train().mixture()
    torch.testing.assert_close(noisy, torch.softmax((torch.log_softmax(method.alpha, 1) + gumbel) / tau, 1))
    assert not torch.allclose(method.mixture(), noisy)  # fresh noise
    torch.testing.assert_close(method.eval().mixture(), torch.softmax(torch.log_softmax(method.alpha, 1) / tau, 1))
