import pytest
import torch

from ctr.batch import JaggedFeatures
from ctr.embeddings.storage import SEED_BYTES
from ctr.embeddings.unified import UnifiedConfig, UnifiedEmbedding
from ctr.errors import RecipeError
from ctr.recipe import recipe_from_dict
from tests.embeddings.schemas import batch, schema

ITEM, USER, TAGS = 0, 1, 2  # table indices (schema order)


def test_same_raw_id_of_two_features_maps_to_different_rows():
    method = UnifiedEmbedding(schema(), UnifiedConfig(dim=16, budget=0.1, probes=2))
    assert len(method.weights) == 1  # one table shared by every feature
    ids = torch.arange(2, 600)
    item, user = method.rows_of(ITEM, ids), method.rows_of(USER, ids)  # [2 probes, N]
    assert (item != user).float().mean() > 0.95
    assert (item == user).all(0).sum() <= 2  # both probes colliding: about N / M^2
    assert (item[0] != item[1]).float().mean() > 0.95  # probes are salted too
    one = JaggedFeatures.from_lengths(
        ["item", "user", "hist", "tags"], torch.tensor([7, 7, 3]), torch.tensor([1, 1, 0, 1])
    )
    out = method(one)
    assert not torch.allclose(out.pooled[0, 0], out.pooled[0, 1])


@pytest.mark.parametrize(
    "budget, probes, feature_probes",
    [(0.5, 1, {}), (0.1, 2, {}), (0.05, 4, {"user": 1}), (0.01, 2, {"tags": 8})],
)
def test_unified_stores_no_more_than_its_budget(budget, probes, feature_probes):
    method = UnifiedEmbedding(schema(), UnifiedConfig(dim=16, budget=budget, probes=probes, feature_probes=feature_probes))
    stored = sum(w.numel() * 4 for w in method.weights) + SEED_BYTES * method.seeds.shape[0]
    assert method.memory_bytes() == stored
    assert 0.95 * budget * method.full_bytes() <= stored <= budget * method.full_bytes()
    widths = {16 // feature_probes.get(t, probes) for t in method.table_names}
    assert sorted(w.shape[1] for w in method.weights) == sorted(widths)
    assert method.seeds.shape[0] == sum(feature_probes.get(t, probes) for t in method.table_names)


def test_k_probes_are_concatenated_and_features_pick_their_own_k():
    method = UnifiedEmbedding(schema(), UnifiedConfig(dim=8, budget=0.2, probes=2, feature_probes={"user": 4}))
    jf = batch()
    out = method(jf)
    wide, narrow = (method.weights[method.table_group[t]] for t in (ITEM, USER))
    assert (wide.shape[1], narrow.shape[1]) == (4, 2)

    def vector(table, weight, ids):
        rows = method.rows_of(table, ids)  # [k, n]
        return torch.cat([weight[rows[j]] for j in range(rows.shape[0])], dim=1)  # [n, D]

    torch.testing.assert_close(out.pooled[0, 0], vector(ITEM, wide, jf.bag("item", 0))[0])
    torch.testing.assert_close(out.pooled[3, 1], vector(USER, narrow, jf.bag("user", 3))[0])
    tags = jf.bag("tags", 5)
    torch.testing.assert_close(out.pooled[5, 2], vector(TAGS, wide, tags).mean(0))
    hist = jf.bag("hist", 1)
    if hist.numel():  # hist shares item's table and hashes
        torch.testing.assert_close(out.sequences["hist"][1, : hist.numel()], vector(ITEM, wide, hist))


def test_unified_gradients_are_sparse_and_reach_every_probe():
    method = UnifiedEmbedding(schema(), UnifiedConfig(dim=8, budget=0.2, probes=2, feature_probes={"user": 4}))
    jf = batch()
    out = method(jf)
    (out.pooled.sum() + out.sequences["hist"].sum()).backward()
    assert all(w.grad.is_sparse for w in method.weights)
    assert method.sparse_parameters() == list(method.weights)
    # by hand: every probe's row of every id gets the id's weight in its bag (1, or 1 / n for tags' mean)
    expected = [torch.zeros(w.shape[0]) for w in method.weights]
    for name, table in (("item", ITEM), ("user", USER), ("hist", ITEM), ("tags", TAGS)):
        for b in range(jf.batch_size):
            rows = method.rows_of(table, jf.bag(name, b)).reshape(-1)  # every probe's
            share = 1 / max(rows.numel() // method.table_probes[table], 1) if name == "tags" else 1.0
            expected[method.table_group[table]].index_add_(0, rows, torch.full(rows.shape, share))
    for weight, want in zip(method.weights, expected):
        torch.testing.assert_close(weight.grad.to_dense(), want.unsqueeze(1).expand_as(weight).contiguous())


def test_bad_probes_name_the_key():
    with pytest.raises(RecipeError, match=r"^embedding\.probes: 3 probes must divide dim 16"):
        recipe_from_dict({"embedding": {"method": "unified", "dim": 16, "budget": 0.1, "probes": 3}})
    with pytest.raises(RecipeError, match=r"^embedding\.feature_probes\.nosuch: no such table"):
        UnifiedEmbedding(schema(), UnifiedConfig(dim=16, budget=0.1, feature_probes={"nosuch": 2}))
    with pytest.raises(RecipeError, match=r"^embedding\.budget: unified sizes"):
        UnifiedEmbedding(schema(), UnifiedConfig(dim=16))


def test_the_traced_lookup_gives_every_id_the_vector_of_its_bag(monkeypatch):
    """While ``torch.export`` traces, ids are looked up one by one (``embed_ids``: every width's
    table, zero where the id's table has another width): the same vectors as the bags path."""
    method = UnifiedEmbedding(schema(), UnifiedConfig(dim=8, budget=0.2, probes=2, feature_probes={"user": 4}))
    jf = batch(size=32)
    expected = method(jf)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    traced = method(jf)
    torch.testing.assert_close(traced.pooled, expected.pooled)
    longest = expected.sequences["hist"].shape[1]
    torch.testing.assert_close(traced.sequences["hist"][:, :longest], expected.sequences["hist"])
    assert not traced.sequences["hist"][:, longest:].any()


def test_the_smallest_budget_it_names_is_reached():
    """budget × full bytes computed in floating point fell a hair short of the one row per
    width and the seeds that the refusal's minimum was computed from."""
    from ctr.embeddings.budget import BudgetUnreachableError

    tight = schema({"item": 149, "user": 600, "tags": 40})
    with pytest.raises(BudgetUnreachableError) as refused:
        UnifiedEmbedding(tight, UnifiedConfig(dim=16, budget=1e-7, probes=2))
    method = UnifiedEmbedding(tight, UnifiedConfig(dim=16, budget=refused.value.min_budget, probes=2))
    assert [w.shape[0] for w in method.weights] == [1]
    assert method.memory_bytes() <= refused.value.min_budget * method.full_bytes() * (1 + 1e-12)


def test_a_lookup_of_single_ids_touches_only_the_rows_of_their_own_width():
    """``embed_ids`` (DIN's second lookup of a step's rows) also read every id in the tables of
    the other widths and zeroed those vectors: their rows came back in the sparse gradient with
    zeros, which weight decay and sparse Adam's moments then moved, though no id had read them."""
    method = UnifiedEmbedding(schema(), UnifiedConfig(dim=8, budget=0.2, probes=2, feature_probes={"user": 4}))
    feature, ids = torch.tensor([0, 0, 1, 1, 3]), torch.tensor([5, 6, 7, 8, 9])  # item, item, user, user, tags
    method.embed_ids(feature, ids).sum().backward()
    for group, weight in enumerate(method.weights):
        touched = [method.rows_of(t, ids[feature == f]).reshape(-1) for f, t in ((0, ITEM), (1, USER), (3, TAGS))
                   if method.table_group[t] == group]
        want = torch.zeros(weight.shape[0]).index_add_(0, torch.cat(touched), torch.ones(torch.cat(touched).numel()))
        grad = weight.grad.coalesce()
        assert grad.indices()[0].tolist() == torch.cat(touched).unique().tolist()
        torch.testing.assert_close(grad.to_dense(), want.unsqueeze(1).expand_as(weight).contiguous())


def test_a_tight_budget_leaves_every_width_at_least_one_row():
    """Rows added by the one-row minimum were taken back from the table of the most floats,
    even when that was a wide table of one row: it was left with none, and the first lookup
    of its features divided by zero. Here the budget holds 20 floats: one 16-dim row and
    two 2-dim ones."""
    vocabs = {"item": 100000, "user": 600, "tags": 40}
    seeds = SEED_BYTES * (8 + 1 + 1)
    full = sum(vocabs.values()) * 16 * 4
    method = UnifiedEmbedding(schema(vocabs), UnifiedConfig(dim=16, budget=(20 * 4 + seeds) / full, probes=1,
                                                            feature_probes={"item": 8}))
    assert [tuple(w.shape) for w in method.weights] == [(1, 16), (2, 2)]
    assert method(batch(vocabs=vocabs)).pooled.shape == (8, 3, 16)
