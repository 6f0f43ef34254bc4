import pytest
import torch

from ctr.embeddings.mgqe import MGQEConfig, MGQEmbedding
from ctr.errors import RecipeError
from ctr.recipe import recipe_from_dict
from tests.embeddings.schemas import schema

BIG = {"item": 20000, "user": 10000, "tags": 1000}


def trained_codes(method):
    """Codes after one training pass over every id of item and user."""
    method.train()
    for table in (0, 1):
        ids = torch.arange(2, method.table_rows[method.table_names[table]])
        method.embed_ids(torch.full_like(ids, table), ids)
    return method.codes.long()


def test_frequent_ids_choose_among_256_centroids_and_rare_among_64():
    method = MGQEmbedding(schema(BIG), MGQEConfig(dim=16, budget=0.1))
    assert method.subspaces == 4
    codes = trained_codes(method)
    frequent = method.frequent
    assert codes[frequent].max() < 256 and codes[frequent].max() >= 64
    assert codes[~frequent].max() < 64
    assert frequent[:20000].sum() == 2000  # top 10 % of item's ids


def test_stored_bytes_are_codes_plus_codebooks_and_evaluation_reads_only_them():
    method = MGQEmbedding(schema(BIG), MGQEConfig(dim=16, budget=0.1))
    assert method.memory_bytes() == method.codes.numel() + method.codebooks.numel() * 4
    assert method.memory_bytes() <= 0.1 * method.full_bytes()
    trained_codes(method)
    method.eval()
    ids = torch.arange(2, 50)
    before = method.embed_ids(torch.zeros_like(ids), ids)
    with torch.no_grad():
        method.weight.normal_()  # the query rows are training state only
    torch.testing.assert_close(method.embed_ids(torch.zeros_like(ids), ids), before)


def test_straight_through_and_commitment_losses():
    method = MGQEmbedding(schema(BIG), MGQEConfig(dim=16, budget=0.1))
    ids = torch.arange(2, 300)  # item's rows: row = id
    out = method.embed_ids(torch.zeros_like(ids), ids)
    # forward: the chosen centroids; backward: the output's gradient passes straight to the query rows
    torch.testing.assert_close(out, method.decode(torch.zeros_like(ids), method.codes[ids].long()))
    reg = method.regularizer()
    assert reg > 0
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward(retain_graph=True)
    assert method.weight.grad.is_sparse and method.codebooks.grad is None
    torch.testing.assert_close(method.weight.grad.to_dense()[ids], upstream)
    reg.backward()
    assert method.codebooks.grad.abs().sum() > 0
    assert method.regularizer() == 0  # the losses are taken once


def test_subspaces_shrink_to_fit_the_budget():
    method = MGQEmbedding(schema(BIG), MGQEConfig(dim=16, budget=0.07))
    assert method.subspaces == 2 and method.memory_bytes() <= 0.07 * method.full_bytes()


@pytest.mark.parametrize("dim, subspaces", [(6, 3), (2, 2), (10, 2)])
def test_the_default_subspaces_are_at_most_not_a_divisor_of_dim(dim, subspaces):
    """``subspaces`` is the most parts S of D: at a D that 4 does not divide the method takes
    the largest divisor below it (``embedding.subspaces: 4 must divide dim 6`` refused the default)."""
    config = recipe_from_dict({"embedding": {"method": "mgqe", "dim": dim, "budget": 0.5}}).embedding
    method = MGQEmbedding(schema(BIG), config)
    assert method.subspaces == subspaces and method.memory_bytes() <= 0.5 * method.full_bytes()
    assert trained_codes(method).shape[1] == subspaces


def test_subspaces_below_one_are_a_one_line_recipe_error():
    with pytest.raises(RecipeError, match=r"^embedding\.subspaces: must be >= 1, got 0$"):
        recipe_from_dict({"embedding": {"method": "mgqe", "budget": 0.5, "subspaces": 0}})


def test_each_occurrence_gets_its_nearest_allowed_centroid():
    """The search, done once per distinct row, equals a brute-force search per occurrence."""
    method = MGQEmbedding(schema(BIG), MGQEConfig(dim=16, budget=0.1))
    with torch.no_grad():
        method.codebooks.normal_()
        method.weight.normal_()
    tables = torch.tensor([0, 0, 1, 0, 2, 1, 0])
    rows = method.row_start[tables] + torch.tensor([2, 5000, 7, 2, 3, 9000, 19999])
    parts = method.weight[rows].view(len(rows), method.subspaces, -1)
    codes = method.assign(tables, rows)
    assert codes.shape == (len(rows), method.subspaces) and method.frequent[rows].tolist().count(True) >= 2
    for i, (table, row) in enumerate(zip(tables.tolist(), rows.tolist())):
        allowed = 256 if method.frequent[row] else 64
        for s in range(method.subspaces):
            distance = (parts[i, s] - method.codebooks[table, s, :allowed]).pow(2).sum(-1)
            assert codes[i, s] == distance.argmin()


def test_mixed_precision_training_chooses_the_nearest_centroids_in_fp32():
    """Under bf16 autocast the distances ‖c‖² − 2⟨x, c⟩ were bf16 products whose cancellation
    picked farther centroids; the search runs in fp32 whatever the autocast."""
    torch.manual_seed(0)
    method = MGQEmbedding(schema(BIG), MGQEConfig(dim=16, budget=0.1))
    tables = torch.zeros(3000, dtype=torch.int64)
    rows = torch.arange(2, 3002)
    exact = method.assign(tables, rows)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = method.assign(tables, rows)
    assert torch.equal(mixed, exact)


@pytest.mark.parametrize("centroids, message", [
    (1, r"^embedding\.rare_centroids: must be >= 2, got 1 \(a code among 1 centroid holds log2 1 = 0 bits: every "
        r"rare id of a table would embed as one vector\)$"),
    (0, r"^embedding: need 2 <= rare_centroids <= frequent_centroids <= 256 \(codes are uint8\)$"),
])
def test_rare_centroids_below_two_are_refused(centroids, message):
    """rare_centroids: 1 trained: every rare id in a subspace chose centroid 0, so the rare ids
    of a table were one vector (no quantization left)."""
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({"embedding": {"method": "mgqe", "budget": 0.5, "rare_centroids": centroids}})


def test_a_saved_run_with_one_rare_centroid_is_built_for_scoring():
    from ctr.errors import scoring_a_saved_run

    with scoring_a_saved_run():
        config = MGQEConfig(dim=8, budget=0.5, frequent_centroids=8, rare_centroids=1)
    assert MGQEmbedding(schema(), config).config.rare_centroids == 1
