"""What every budget-sized method of the compression benchmark shares: it stays within its
budget or refuses it naming the smallest budget it reaches, bad settings are one-line errors,
and it trains end to end."""

import dataclasses

import numpy as np
import pytest
import torch
import yaml

from ctr.embeddings.budget import BudgetUnreachableError
from ctr.embeddings.stages import StageContext
from ctr.errors import RecipeError
from ctr.kernels.embedding_bag import BackendUnavailable
from ctr.recipe import recipe_from_dict
from ctr.batch import JaggedFeatures
from ctr.cli import main
from ctr.registry import EMBEDDINGS
from ctr.schema import FeatureInfo, FeatureSpec, Schema
from ctr.train.runner import evaluate, train
from tests.conftest import run_ctr, tiny_recipe
from tests.embeddings.schemas import batch, schema

BIG = {"item": 200000, "user": 100000, "tags": 1000}
METHODS = {  # method → options for the hand-built schema; dedup's 8 LSH tables (of 90) merge 300k rows in seconds
    "compo": {}, "robe": {}, "dhe": {}, "ttrec": {"max_rank": 256}, "adaptemb": {}, "mgqe": {}, "dedup": {"lsh_tables": 8},
    "int8": {}, "int16": {}, "alpt": {}, "mde": {}, "dpq": {}, "deeplight": {}, "pep": {}, "autodim": {}, "autosrh": {},
}
UNREACHABLE = {  # one byte of code per id and part is 1/64 of a D = 16 row; integer rows have fixed ratios
    ("mgqe", 0.01), ("dpq", 0.01), ("int8", 0.1), ("int8", 0.01), ("int16", 0.1), ("int16", 0.01),
    ("alpt", 0.1), ("alpt", 0.01), ("mde", 0.01),  # mde: the smallest table keeps D
    ("deeplight", 0.01), ("pep", 0.01), ("autosrh", 0.01), ("autodim", 0.1), ("autodim", 0.01),  # autodim: every table at dim 2  # a bitmap's bit per entry is 1/32 of a fp32 entry
}
FIXED_RATIO = ("int8", "int16", "alpt")  # no budget needed: their ratio is fixed
FREQUENCIES = ("adaptemb", "mgqe", "dnis", "autosrh")


def build(method, budget, vocabs=BIG, **options):
    entry = EMBEDDINGS.get(method)
    config = entry.config(dim=16, budget=budget, **{**METHODS[method], **options})
    return entry.target(schema(vocabs), config)


def deployed(embedding):
    """The method after its stages (taken by hand, without training): what it deploys."""
    for stage in embedding.stages():
        embedding.begin_stage(stage)
        if stage.kind == "procedure":
            embedding.run_procedure(stage, StageContext(score=lambda: 0.5, seed=0))
    return embedding


@pytest.mark.parametrize("budget", [0.5, 0.1, 0.01])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_memory_stays_within_the_budget(method, budget):
    if (method, budget) in UNREACHABLE:
        with pytest.raises(BudgetUnreachableError) as err:
            build(method, budget)
        assert budget < err.value.min_budget < 1
        assert build(method, err.value.min_budget * 1.01).memory_bytes() <= err.value.min_budget * 1.01 * build(
            "robe", 0.5).full_bytes()
        return
    embedding = deployed(build(method, budget))
    assert embedding.memory_bytes() <= budget * embedding.full_bytes()
    assert embedding.memory_bytes() > 0


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bad_options_and_budgets_are_one_line_recipe_errors(method):
    with pytest.raises(RecipeError, match=r"^embedding\.no_such_option: unknown key"):
        recipe_from_dict({"embedding": {"method": method, "budget": 0.1, "no_such_option": 1}})
    for budget in (0, 1.5, -0.1):
        with pytest.raises(RecipeError, match=r"^embedding\.budget: must be in \(0, 1\]$"):
            recipe_from_dict({"embedding": {"method": method, "budget": budget}})
    if method in FIXED_RATIO:
        assert build(method, None).memory_bytes() > 0
    else:
        with pytest.raises(RecipeError, match=rf"^embedding\.budget: {method} sizes its storage from a budget"):
            build(method, None)
    with pytest.raises(BudgetUnreachableError, match=rf"^embedding\.budget: 1e-07 is too small for {method}: [^\n]*$"):
        build(method, 1e-7)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_smallest_budget_a_refusal_names_is_reached(method):
    """The named minimum is rounded up, never down: typing it back is accepted."""
    with pytest.raises(BudgetUnreachableError) as err:
        build(method, 1e-7)
    shown = float(str(err.value).rsplit("reaches is ", 1)[1])
    assert shown >= err.value.min_budget
    embedding = deployed(build(method, shown))
    assert embedding.memory_bytes() <= shown * embedding.full_bytes()


@pytest.mark.parametrize("method", ["dedup", "deeplight", "pep", "optembed", "dnis", "autosrh", "autodim"])
def test_only_methods_with_architecture_parameters_take_an_arch_optimizer(method):
    """dedup, deeplight and pep took ``arch_optimizer`` and used it for nothing."""
    raw = {"embedding": {"method": method, "budget": 0.1, "arch_optimizer": {"name": "sgd", "lr": 0.1}}}
    searches = "arch_optimizer" in {field.name for field in dataclasses.fields(EMBEDDINGS.get(method).config)}
    assert searches == (method in ("optembed", "dnis", "autosrh", "autodim"))
    if searches:
        assert recipe_from_dict(raw).embedding.arch_optimizer.name == "sgd"
    else:
        with pytest.raises(RecipeError, match=r"^embedding\.arch_optimizer: unknown key"):
            recipe_from_dict(raw)


@pytest.mark.parametrize("method", ["hash", "unified"])
def test_the_hashed_baselines_name_the_smallest_budget_they_reach_too(method):
    """hash and unified said only what the budget held ("it holds 0 floats")."""
    entry = EMBEDDINGS.get(method)
    with pytest.raises(BudgetUnreachableError) as err:
        entry.target(schema(), entry.config(dim=16, budget=1e-7))
    shown = float(str(err.value).rsplit("reaches is ", 1)[1])
    embedding = entry.target(schema(), entry.config(dim=16, budget=shown))
    assert embedding.memory_bytes() <= shown * embedding.full_bytes()


def test_a_method_that_needs_more_than_the_full_tables_says_so():
    err = BudgetUnreachableError("mgqe", 0.5, 1.4321, "its codebooks alone exceed it")
    assert str(err) == ("embedding.budget: 0.5 is too small for mgqe: its codebooks alone exceed it; on this schema "
                        "it needs more bytes than the full tables (1.44 of them)")


@pytest.mark.parametrize("method", FREQUENCIES)
def test_methods_without_their_frequencies_refuse_in_one_line(method):
    bare = schema()
    del bare.counts["user"]
    entry = EMBEDDINGS.get(method)
    with pytest.raises(RecipeError, match=rf"^embedding\.method: {method} needs the training frequencies of table 'user'"):
        entry.target(bare, entry.config(dim=8, budget=0.5))


SMOKE = {  # tiny data: 1151 ids at D = 8, so DHE and MGQE get smaller encodings and codebooks
    "compo": {"budget": 0.5}, "robe": {"budget": 0.1, "block": 2}, "dhe": {"budget": 0.5, "hashes": 32},
    "ttrec": {"budget": 0.25}, "adaptemb": {"budget": 0.25},
    "mgqe": {"budget": 0.5, "frequent_centroids": 8, "rare_centroids": 4}, "dedup": {"budget": 0.3, "block_rows": 4},
    "int8": {"budget": 0.25}, "int16": {"budget": 0.5}, "alpt": {"budget": 0.5}, "mde": {"budget": 0.5},
    "dpq": {"budget": 0.5, "choices": 8}, "deeplight": {"budget": 0.3, "interval": 2},
    "pep": {"budget": 0.3, "threshold_init": -5.0, "check_every": 2}, "autodim": {"budget": 0.5},
    "autosrh": {"budget": 0.3}, "dpq_sx": {"method": "dpq", "budget": 0.5, "choices": 8, "mode": "sx"},
}


REPLAYED = ("dedup", "int8", "alpt", "dpq", "deeplight", "pep", "autodim", "autosrh")


@pytest.mark.parametrize("method", sorted(SMOKE))
def test_each_method_trains_one_epoch_on_tiny_data(method, tmp_path):
    """The replayed methods' ``eval`` of the finished run gives its test AUC: dedup, deeplight
    and pep replay their stages (the pruned ones end stored sparse); the integer rows and the
    codes are what the checkpoint holds."""
    embedding = {"method": method, "dim": 8, **SMOKE[method]}
    metrics = train(recipe_from_dict(tiny_recipe(tmp_path, embedding=embedding)), tmp_path / "run")
    if method in REPLAYED:
        assert abs(evaluate(tmp_path / "run", "test")["auc"] - metrics["test"]["auc"]) < 1e-6
    assert metrics["embedding_bytes"] <= embedding["budget"] * metrics["full_embedding_bytes"]
    assert metrics["steps"] > 0 and np.isfinite(metrics["test"]["logloss"])
    if method == "dedup":  # warm-up, deduplication, fine-tuning
        assert set(metrics["stage_seconds"]) == {"warmup", "dedup", "finetune"}
    if method == "deeplight":  # gradual pruning, then the kept entries stored sparse train on
        assert set(metrics["stage_seconds"]) == {"prune", "finetune"}
    if method == "autodim":  # bi-level search, retrain at the chosen dims
        assert set(metrics["stage_seconds"]) == {"search", "retrain"}
    if method == "autosrh":  # dnis's stages over equal-size groups
        assert set(metrics["stage_seconds"]) == {"search", "prune", "retrain"}
    if method == "pep":  # search, mask, retrain from the initial values
        assert set(metrics["stage_seconds"]) == {"search", "mask", "retrain"}


def test_an_unreachable_budget_exits_2_with_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, embedding={"method": "mgqe", "dim": 8, "budget": 0.1})))
    done = run_ctr("train", recipe)
    code, err = done.returncode, done.stderr
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("ctr: error: embedding.budget: 0.1 is too small for mgqe")
    assert "on this schema it needs more bytes than the full tables" in lines[-1]  # its codebooks, on tiny vocabularies


def test_ctr_models_lists_the_methods(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for method in METHODS:
        assert f"  {method} " in out


def test_the_criteo_scale_recipe_validates():
    from pathlib import Path

    from ctr.datasets.synthetic import CRITEO_VOCABS
    from ctr.recipe import load_recipe

    root = Path(__file__).resolve().parents[2]
    recipe = load_recipe(root / "recipes" / "criteo_synth" / "dlrm.yaml")
    assert recipe.data.integer_ids and recipe.data.vocab_sizes == CRITEO_VOCABS  # 33,762,577 ids
    assert (recipe.model.bottom_mlp, recipe.model.top_mlp, recipe.embedding.dim) == ([512, 256, 64], [512, 256], 16)
    assert recipe.train.embedding_optimizer.fused and recipe.train.epochs == 1


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_batch_without_ids_embeds_to_zeros_with_a_finite_loss(method):
    """Sequence features only, and no sample holds an id: autodim and mgqe raised, and dpq's
    commitment loss (a mean over no ids) was nan, which ends training as diverged."""
    sizes = {"hist": BIG["item"], "tags": BIG["tags"]}
    names = tuple(sizes)
    features = [FeatureInfo(FeatureSpec(name=name, kind="sequence", pooling="sum"), vocab_size=size, table=name)
                for name, size in sizes.items()]
    counts = {name: (1e5 / np.arange(1, size + 1) ** 1.1).astype(np.int64) for name, size in sizes.items()}
    entry = EMBEDDINGS.get(method)
    embedding = entry.target(Schema(features, "y", counts=counts), entry.config(dim=16, budget=0.5, **METHODS[method]))
    empty = JaggedFeatures.from_lengths(list(names), torch.zeros(0, dtype=torch.int64), torch.zeros(8, dtype=torch.int64))
    for training in (True, False):
        embedding.train(training)
        assert torch.equal(embedding(empty).pooled, torch.zeros(4, 2, 16))
        assert torch.isfinite(embedding.regularizer())


@pytest.mark.parametrize("method", [entry.name for entry in EMBEDDINGS.entries()])
def test_a_method_that_sizes_itself_from_a_budget_says_so_and_the_recipe_refuses_none(method):
    """``needs_budget`` agrees with the method (built without a budget it refuses exactly
    then), and a recipe without a budget is refused when read: ``ctr train`` prepared the data
    first, ``ctr tune`` trained earlier points of a grid before the one without."""
    entry = EMBEDDINGS.get(method)
    tiny = schema({"item": 50, "user": 40, "tags": 30})
    try:
        entry.target(tiny, entry.config(dim=8))
        refused = False
    except RecipeError as err:
        refused = str(err).startswith("embedding.budget:")
    assert entry.target.needs_budget == refused
    if refused:
        with pytest.raises(RecipeError, match=rf"^embedding\.budget: {method} sizes its storage from a budget"):
            recipe_from_dict({"embedding": {"method": method}})
    else:
        recipe_from_dict({"embedding": {"method": method}})


@pytest.mark.parametrize("method", [entry.name for entry in EMBEDDINGS.entries()])
def test_a_method_that_reads_the_kernel_backend_says_so(method):
    """``reads_backend`` agrees with the method: a lookup with a backend no machine has fails
    exactly when the method looks its rows up through the kernels (the recipe refuses
    ``embedding.backend`` for the others)."""
    entry = EMBEDDINGS.get(method)
    budget = 0.5 if entry.target.needs_budget else None
    embedding = entry.target(schema(), entry.config(dim=8, budget=budget, backend="no_such_backend"))
    try:
        embedding(batch())
        read = False
    except BackendUnavailable:
        read = True
    assert entry.target.reads_backend == read


@pytest.mark.parametrize("method, options", [("compo", {}), ("ttrec", {}), ("pep", {}), ("dpq", {"mode": "sx"})])
def test_rows_that_would_start_at_zero_and_never_train_are_a_one_line_recipe_error(method, options):
    """compo's product of two rows, ttrec's product of three cores, pep's sign(w) and dpq's
    sx responses ⟨query, key⟩ have no gradient where every factor is 0: ``init_std: 0``
    trained a table that never moved (pep then blamed ``threshold_init``; dpq sx gave every id
    code 0). compo's ``add`` and dpq's ``vq`` train from zeros and are kept."""
    raw = {"method": method, "budget": 0.3, "init_std": 0.0, **options}
    with pytest.raises(RecipeError, match=rf"^embedding\.init_std: must be > 0 for {method}[^\n]*never train\)$"):
        recipe_from_dict({"embedding": raw})
    config = EMBEDDINGS.get(method).config(dim=8, budget=0.3, init_std=1e-4, **options)
    embedding = EMBEDDINGS.get(method).target(schema(), config)
    ids = torch.arange(2, 40)
    embedding.embed_ids(torch.zeros_like(ids), ids).square().sum().backward()
    gradients = [p.grad for p in embedding.parameters() if p.grad is not None]
    assert any(bool(g.coalesce().values().abs().sum() if g.is_sparse else g.abs().sum()) for g in gradients)
    for kept in ({"method": "compo", "operation": "add"}, {"method": "dpq", "mode": "vq"}):
        assert recipe_from_dict({"embedding": {**kept, "budget": 0.3, "init_std": 0.0}})
