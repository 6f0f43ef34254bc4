import numpy as np
import pytest
import torch

from ctr.embeddings.budget import BudgetUnreachableError
from ctr.embeddings.evolution import EvolutionarySearch, EvolutionConfig
from ctr.embeddings.optembed import BinaryStep, OptEmbed, OptEmbedConfig
from ctr.embeddings.stages import Stage, StageContext
from ctr.errors import RecipeError, scoring_a_saved_run
from ctr.recipe import recipe_from_dict
from ctr.schema import FeatureInfo, FeatureSpec, Schema
from tests.embeddings.schemas import batch, schema

SEARCH, RETRAIN = Stage("search", kind="procedure"), Stage("retrain")


def test_binary_step_is_a_unit_step_with_the_long_tailed_gradient():
    x = torch.tensor([-1.5, -0.7, -0.1, 0.0, 0.1, 0.3, 0.5, 1.5], requires_grad=True)
    y = BinaryStep.apply(x)
    assert y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 0.4, 1.6, 2.0, 1.6, 0.8, 0.4, 0.0]))


def test_threshold_gets_the_straight_through_gradient_and_the_exp_regularizer():
    method = OptEmbed(schema(), OptEmbedConfig(dim=8, threshold_reg=0.5, threshold_init=0.05))
    torch.testing.assert_close(method.regularizer(), 0.5 * torch.exp(-torch.full((3,), 0.05)).sum())
    out = method(batch())
    (out.pooled.sum() + out.sequences["hist"].sum()).backward()
    assert (method.threshold.grad != 0).all()  # the mask passes a gradient to t of every field
    method.threshold.grad = None
    method.regularizer().backward()
    torch.testing.assert_close(method.threshold.grad, -0.5 * torch.exp(-torch.full((3,), 0.05)))
    assert method.arch_parameters() == [method.threshold]


def test_rows_under_their_fields_threshold_embed_to_zero():
    method = OptEmbed(schema(), OptEmbedConfig(dim=8)).eval()
    jf = batch()
    item_ids = jf.bag("item", 0)
    with torch.no_grad():
        norm = method.weight[item_ids].abs().sum()
        method.threshold[0] = norm + 1e-3  # prunes this item row (and maybe others)
    out = method(jf)
    assert torch.count_nonzero(out.pooled[0, 0]) == 0
    assert torch.count_nonzero(out.pooled[0, 1]) == 8  # user's threshold is still 0


def test_supernet_samples_a_dimension_per_sample_and_field():
    torch.manual_seed(0)
    method = OptEmbed(schema(), OptEmbedConfig(dim=8))
    jf = batch(size=64)
    widths = (method(jf).pooled != 0).sum(-1)  # [B, 3]: nonzero prefix = sampled d (rows are nonzero)
    assert widths.min() >= 1 and widths.max() <= 8
    assert len(torch.unique(widths[:, 0])) >= 6 and not torch.equal(widths[:, 0], widths[:, 1])
    out = method(jf)
    hist = out.sequences["hist"]  # shares item's table, so it gets the sample's item dimension
    item = (out.pooled[:, 0] != 0).sum(-1)
    for b in range(64):
        if out.masks["hist"][b].any():
            assert (hist[b][out.masks["hist"][b]] != 0).sum(-1).eq(item[b]).all()
    assert (method.eval()(jf).pooled != 0).sum(-1).eq(8).all()  # evaluation uses every dimension


def searched(dim, thresholds, dims, seed=1):
    """An OptEmbed after its search: rows pruned by ``thresholds``, ``dims`` per field."""
    torch.manual_seed(seed)
    method = OptEmbed(schema(), OptEmbedConfig(dim=dim)).eval()
    with torch.no_grad():
        method.threshold.copy_(torch.tensor(thresholds))
    method.phase = "search"
    method.begin_stage(SEARCH)
    method.dims.copy_(torch.tensor(dims))
    return method


def independent_bytes(method, thresholds, dims):
    """The shared pruned format's bytes counted from the masks: row r of field f is kept iff
    ‖w_r‖₁ > t_f and keeps its first d_f entries; bitmap = 4·nnz + R·⌈D/8⌉, CSR = 5·nnz +
    4·(R + 1) (uint8 columns, int32 row pointers), whichever is smaller."""
    kept = {}
    for (table, rows), start, t, d in zip(method.table_rows.items(), method.table_start, thresholds, dims):
        norms = method.weight.detach()[start : start + rows].abs().sum(1)
        kept[table] = int((norms > t).sum())
    nnz = sum(k * d for k, d in zip(kept.values(), dims))
    rows, dim = sum(method.table_rows.values()), method.dim
    return kept, min(4 * nnz + rows * ((dim + 7) // 8), 5 * nnz + 4 * (rows + 1))


@pytest.mark.parametrize("dim, dims, stored", [(8, [5, 2, 7], "bitmap"), (64, [1, 2, 1], "csr")])
def test_retrained_table_is_stored_in_the_shared_pruned_format_and_embeds_the_same(dim, dims, stored):
    thresholds = [0.06 * dim / 8, 0.05 * dim / 8, 0.07 * dim / 8]  # prunes part of every table
    method = searched(dim, thresholds, dims)
    kept, expected = independent_bytes(method, thresholds, dims)
    jf = batch(size=32)
    before = method(jf)
    assert method.kept_rows() == list(kept.values()) and all(0 < k < n for k, n in zip(kept.values(), method.table_rows.values()))
    method.begin_stage(RETRAIN)
    assert method.sparse.format == stored and method.memory_bytes() == expected
    state = method.state_dict()  # the checkpoint holds exactly what is counted
    assert sum(t.numel() * t.element_size() for t in state.values()) == expected
    assert all(k.startswith("sparse.") for k in state)
    assert method.sparse.values.numel() == sum(k * d for k, d in zip(kept.values(), dims))
    after = method(jf)
    torch.testing.assert_close(after.pooled, before.pooled)
    torch.testing.assert_close(after.sequences["hist"], before.sequences["hist"])
    (after.pooled.sum()).backward()
    assert method.sparse_parameters() == [method.sparse.values] and method.sparse.values.grad.is_sparse
    item = method.feature_names.index("item")  # the per-id rows hook (DIN's L2) reads the stored table
    ids = torch.tensor([jf.bag("item", b)[0] for b in range(4)])
    torch.testing.assert_close(method.embed_ids(torch.full_like(ids, item), ids), before.pooled[:4, 0])


def test_the_search_budget_counts_the_shared_pruned_format():
    method = searched(8, [0.06, 0.05, 0.07], [5, 2, 7])
    kept = method.kept_rows()
    for dims in ((1, 1, 1), (3, 8, 2)):
        nnz = sum(k * d for k, d in zip(kept, dims))
        assert method.retrained_bytes(dims, kept) == min(4 * nnz + method.table_of_row.numel(), 5 * nnz + 4 * (method.table_of_row.numel() + 1))


def test_a_budget_no_kept_entry_fits_is_refused_before_training_with_the_smallest_budget():
    with pytest.raises(BudgetUnreachableError) as err:
        OptEmbed(schema(), OptEmbedConfig(dim=16, budget=0.01))  # a bitmap's bit per entry: 1/32 of the fp32 bytes
    assert 1 / 32 < err.value.min_budget < 0.04 and "too small for optembed" in str(err.value)
    assert OptEmbed(schema(), OptEmbedConfig(dim=16, budget=0.04)).memory_bytes() > 0


def test_search_cuts_the_smallest_margin_rows_when_the_kept_rows_exceed_the_budget():
    torch.manual_seed(2)
    method = OptEmbed(schema(), OptEmbedConfig(dim=8, budget=0.05, population=4, parents=2, mutations=2, crossovers=2, generations=1))
    method.phase = "search"
    method.begin_stage(SEARCH)  # thresholds 0: every row kept, more than 5 % of the bytes hold at 1 dim
    margins = method.weight.detach().abs().sum(1)
    method.run_procedure(SEARCH, StageContext(score=lambda: 0.5, seed=0))
    kept = method.kept_rows()
    limit = 0.05 * method.full_bytes()
    assert method.rows_cut_to_budget > 0 and sum(kept) == margins.numel() - method.rows_cut_to_budget
    assert method.retrained_bytes(tuple(method.dims.tolist()), kept) <= limit < method.retrained_bytes((1, 1, 1), [k + 1 for k in kept])
    assert margins[method.row_keep].min() >= margins[~method.row_keep].max()  # the largest rows stay


def test_the_search_leaves_the_best_scored_dims_for_the_retrain():
    torch.manual_seed(0)
    method = OptEmbed(schema(), OptEmbedConfig(dim=8, budget=0.5, population=6, parents=2, mutations=4, crossovers=2,
                                               generations=3))
    method.phase = "search"
    method.begin_stage(SEARCH)
    target = torch.tensor([5, 2, 7])

    def score():  # the validation AUC of the dims the search set: here, their distance to target
        return -float((method.dims - target).abs().sum())

    method.run_procedure(SEARCH, StageContext(score=score, seed=0))
    result = method.search_result
    assert result.score == max(s for _, s in result.history) == score()
    assert tuple(method.dims.tolist()) == tuple(result.best)


def test_search_children_are_new_candidates():
    def cost(dims):
        return sum(dims)

    search = EvolutionarySearch(3, 16, lambda dims: float(sum(dims)), cost, None, np.ones(3), np.random.default_rng(0))
    result = search.run(EvolutionConfig(population=8, parents=4, mutations=6, crossovers=0, mutation_prob=0.1, generations=3))
    assert len(result.history) == 8 + 3 * 6  # no slot lost to a mutation that repeats its parent


def test_evolutionary_search_finds_different_dims_per_field_within_the_budget():
    kept = np.array([400, 50, 10, 200, 5, 30])
    target = np.array([3, 12, 16, 6, 9, 1])

    def cost(dims):
        return int((kept * np.array(dims)).sum() * 4)

    def score(dims):
        return -float(np.abs(np.array(dims) - target).sum())

    limit = cost(target) * 1.05
    search = EvolutionarySearch(6, 16, score, cost, limit, kept.astype(float), np.random.default_rng(0))
    result = search.run(EvolutionConfig(population=20, parents=5, mutations=15, crossovers=15, mutation_prob=0.3, generations=30))
    assert cost(result.best) <= limit
    assert all(cost(c) <= limit for c, _ in result.history)
    assert len(set(result.best)) >= 4  # the fields get different dims
    assert np.abs(np.array(result.best) - target).sum() <= 4  # and they approach the optimum
    assert result.score == max(s for _, s in result.history)


@pytest.mark.parametrize("config", [{"threshold_init": 2.0}, {"init_std": 0.0}])
def test_a_supernet_that_pruned_every_row_is_refused_naming_threshold_init(config):
    """No row's L1 norm above its field's threshold (a threshold_init above every row's, or rows of
    init_std 0 under the default threshold 0): the search scored an empty table and the retrain
    ended in index_select's traceback."""
    method = OptEmbed(schema(), OptEmbedConfig(dim=8, **config))
    threshold = config.get("threshold_init", 0.0)
    with pytest.raises(RecipeError, match=rf"^embedding\.threshold_init: optembed's supernet pruned every row \(no "
                                          rf"row's L1 norm passed its field's threshold, which began at {threshold}\): "
                                          r"nothing is left to search or retrain; start the thresholds lower or the "
                                          r"rows larger \(embedding\.init_std\)$"):
        method.begin_stage(SEARCH)


def test_optembed_settings_are_validated():
    with pytest.raises(RecipeError, match=r"^embedding: need 1 <= parents <= population"):
        recipe_from_dict({"embedding": {"method": "optembed", "population": 4, "parents": 6}})
    with pytest.raises(RecipeError, match=r"^embedding: stages\.retrian: unknown stage"):
        recipe_from_dict({"embedding": {"method": "optembed", "stages": {"retrian": {"epochs": 1}}}})
    with pytest.raises(RecipeError, match=r"^embedding\.stages\.supernet\.epochs: expected int"):
        recipe_from_dict({"embedding": {"method": "optembed", "stages": {"supernet": {"epochs": "two"}}}})


def test_a_population_past_the_candidates_there_are_scores_each_once():
    """The default population (20) over 3 fields of dims 1..2 (8 candidates): the first
    generation repeats some, each scored once, and the net is built."""
    scored = []

    def score(dims):
        scored.append(dims)
        return float(sum(dims))

    search = EvolutionarySearch(3, 2, score, sum, None, np.ones(3), np.random.default_rng(0))
    result = search.run(EvolutionConfig(population=20, parents=4, mutations=4, crossovers=4, generations=2))
    assert len(scored) == len(set(scored)) == len(result.history) == 8 and result.best == (2, 2, 2)
    assert OptEmbed(schema(), OptEmbedConfig(dim=2)).config.population == 20


def many_fields(count: int) -> Schema:
    """``count`` categorical features, each its own table of 4 rows."""
    features = [FeatureInfo(FeatureSpec(name=f"f{i}"), vocab_size=4, table=f"f{i}") for i in range(count)]
    return Schema(features=features, label="y", counts={f"f{i}": np.array([0, 0, 5, 3]) for i in range(count)})


def test_a_population_past_memory_is_refused_naming_the_key(monkeypatch):
    """Every candidate drawn is kept with its dims and score: 9,000 of 4,000 fields need ~0.3
    GiB. Under the 10,000 candidates' limit, only fields by the thousands (or a small machine)
    come near a machine's memory."""
    from ctr.embeddings import optembed

    monkeypatch.setattr(optembed, "memory_bytes", lambda: 2**27)
    with pytest.raises(RecipeError, match=r"^embedding\.population: 9000 candidates of 4000 fields need ~0\.3 GiB for "
                                          r"the search to hold, more than this machine's 0\.1 GiB; lower it$"):
        OptEmbed(many_fields(4000), OptEmbedConfig(dim=8, population=9000))
    assert OptEmbed(many_fields(4000), OptEmbedConfig(dim=8, population=3000)).config.population == 3000


def test_a_population_past_the_candidates_limit_is_refused_by_the_limit_on_any_machine(monkeypatch):
    """10^8 candidates of 3 fields need ~26 GiB, more than a small machine's memory, but the
    limit of 10,000 candidates scored is what a machine of any size refuses them by."""
    from ctr.embeddings import optembed

    monkeypatch.setattr(optembed, "memory_bytes", lambda: 2**30)
    with pytest.raises(RecipeError, match=r"^embedding\.population: population 100000000 \+ generations 10 .* past "
                                          r"optembed's limit of 10,000"):
        OptEmbed(schema(), OptEmbedConfig(dim=8, population=10**8))


def test_a_saved_run_with_a_population_refused_since_is_built_for_scoring():
    with scoring_a_saved_run():
        assert OptEmbed(schema(), OptEmbedConfig(dim=8, population=10**9)).config.population == 10**9


@pytest.mark.parametrize(("settings", "key", "candidates"), [
    ({"generations": 1000, "mutations": 10, "crossovers": 10}, "generations", "20,020"),
    ({"mutations": 5000}, "mutations", "50,120"),
    ({"crossovers": 1000}, "crossovers", "10,120"),
    ({"population": 12_000, "parents": 10}, "population", "12,200"),
])
def test_a_search_past_its_candidates_limit_is_refused_naming_the_key(settings, key, candidates):
    """Each candidate scored is a pass over the validation split: tens of thousands of them
    would search for days; the defaults score 220. A saved run is still built."""
    message = (rf"^embedding\.{key}: population \d+ \+ generations \d+ × \(mutations \d+ \+ crossovers \d+\) "
               rf"score up to {candidates} candidates, each a pass over the validation split, past optembed's "
               r"limit of 10,000 \(the defaults score 220\); lower it$")
    with pytest.raises(RecipeError, match=message):
        OptEmbed(schema(), OptEmbedConfig(dim=8, **settings))
    with scoring_a_saved_run():
        assert OptEmbed(schema(), OptEmbedConfig(dim=8, **settings)).config.population == settings.get("population", 20)


def test_generations_past_the_limit_are_refused_even_without_children():
    """No children (mutations 0, crossovers 0) scores no candidate, but each generation still sorts
    every candidate scored: 10^6 generations are refused; 1,000 of 9 children each (9,020 candidates, 41 times
    the defaults' 220) are built."""
    message = r"^embedding\.generations: 1000000 generations are past optembed's limit of 1,000 \(the defaults run 10\)"
    with pytest.raises(RecipeError, match=message + "; lower it$"):
        OptEmbed(schema(), OptEmbedConfig(dim=8, generations=10**6, mutations=0, crossovers=0))
    config = OptEmbedConfig(dim=8, population=20, generations=1000, mutations=5, crossovers=4)
    assert OptEmbed(schema(), config).config.generations == 1000


@pytest.mark.parametrize(("settings", "key"), [
    ({"population": 5000, "generations": 1000}, "generations"),
    ({"population": 100, "generations": 20, "mutations": 600, "crossovers": 500}, "generations"),
    ({"population": 9000, "parents": 3000, "generations": 100, "mutations": 40, "crossovers": 40}, "generations"),
    ({"population": 9000, "generations": 100, "mutations": 20, "crossovers": 10}, "population"),
])
def test_a_search_past_its_limit_names_a_key_whose_lowering_alone_brings_it_under(settings, key):
    """Population 5,000 is the key furthest above its default, but at its lowest (the 10
    parents) 1,000 generations × 20 children still score 20,010: generations is named. Of 20
    generations × (600 mutations + 500 crossovers), no kind of child alone brings 22,100
    under 10,000; 3,000 parents keep population from doing so."""
    with pytest.raises(RecipeError, match=rf"^embedding\.{key}: population"):
        OptEmbed(schema(), OptEmbedConfig(dim=8, **settings))
