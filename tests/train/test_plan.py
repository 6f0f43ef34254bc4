"""``ctr plan``: TorchRec's planner over a recipe's tables, per-table and per-rank bytes."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ctr.cli import main
from ctr.datasets import prepare
from ctr.errors import UserError
from ctr.recipe import recipe_from_dict
from ctr.train.plan import STATE_FLOATS, parse_bytes, plan_tables
from tests.conftest import tiny_recipe

pytest.importorskip("torchrec")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("optimizer", ["adagrad", "rowwise_adagrad"])
def test_plan_covers_every_table_and_totals_each_rank(tmp_path, optimizer):
    recipe = recipe_from_dict(tiny_recipe(tmp_path, train={"embedding_optimizer": {"name": optimizer, "lr": 0.05}}))
    schema = prepare(recipe.data, progress=False).schema
    plan = plan_tables(recipe, schema, world_size=2, memory_per_rank=None)
    assert sorted(t.name for t in plan.tables) == sorted(schema.tables())
    state = STATE_FLOATS[optimizer]
    for table in plan.tables:
        assert table.rows == schema.tables()[table.name] and table.dim == 8
        covered = sum(rows * cols for _, rows, cols in table.shards)
        copies = len({rank for rank, _, _ in table.shards}) if table.sharding == "data_parallel" else 1
        assert covered == copies * table.rows * table.dim
    for rank in range(2):
        held = [(r, rows, cols) for t in plan.tables for r, rows, cols in t.shards if r == rank]
        expected = sum(rows * (cols + state(cols)) * 4 for _, rows, cols in held)
        assert plan.rank_bytes(rank) == expected
        assert plan.rank_bytes(rank) <= plan.planner_bytes[rank] <= plan.rank_bytes(rank) + 2**20  # planner's own count


def test_auto_tables_of_a_dim_that_cannot_shard_stay_data_parallel(tmp_path):
    """FBGEMM refuses a sharded table of 6 columns (TorchRec's assertion on every rank): under
    auto the planner would make 15 of these tables table-wise; they stay replicas."""
    recipe = recipe_from_dict(tiny_recipe(tmp_path, data={"vocab_scale": 1.0}, embedding={"dim": 6}))
    plan = plan_tables(recipe, prepare(recipe.data, progress=False).schema, world_size=2, memory_per_rank=None)
    assert {table.sharding for table in plan.tables} == {"data_parallel"}


@pytest.mark.parametrize("dim, world, widths", [(12, 2, {4}), (20, 2, {4}), (24, 4, {4}), (16, 2, {8}), (4, 2, {4})])
def test_column_wise_tables_split_over_the_ranks(tmp_path, dim, world, widths):
    """Shards of D / world columns where the planner takes that width, else the widest it takes
    below it: a least width of 6 of D = 12 made the planner keep each table whole on one rank."""
    recipe = recipe_from_dict(tiny_recipe(tmp_path, embedding={"dim": dim}, distributed={"sharding": "column_wise"}))
    plan = plan_tables(recipe, prepare(recipe.data, progress=False).schema, world_size=world, memory_per_rank=None)
    for table in plan.tables:
        assert {cols for _, _, cols in table.shards} == widths and sum(c for _, _, c in table.shards) == dim
        assert len({rank for rank, _, _ in table.shards}) == min(world, dim // 4)


def test_cli_prints_tables_and_ranks(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    assert main(["plan", str(path), "--world-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "| C1 |" in out and "| rank | weights + state MB |" in out and "| 1 |" in out
    assert "| weights MB (all ranks) | optimizer state MB (all ranks) |" in out  # a replica counts on each rank
    assert "is not sharded" not in out
    assert main(["plan", str(path), "--world-size", "2", "-o", "embedding.method=dnis", "-o", "embedding.budget=0.5"]) == 0
    assert "embedding.method dnis is not sharded: it trains data-parallel" in capsys.readouterr().out


def test_fbgemms_notes_of_the_libraries_it_loads_are_not_shown(tmp_path):
    """Row-wise Adagrad's check imports TorchRec, which loads FBGEMM: its "Successfully
    loaded" notes to the root logger were printed, 14 lines before the plan (a fresh process:
    this one has loaded them already)."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    done = subprocess.run([sys.executable, "-m", "ctr", "plan", str(path), "--world-size", "2", "-o",
                           "train.embedding_optimizer.name=rowwise_adagrad"], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fbgemm" not in done.stderr, done.stderr


def test_a_compressing_method_says_what_each_rank_holds(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, embedding={"method": "hash", "budget": 0.5})))
    assert main(["plan", str(path), "--world-size", "2"]) == 0
    recipe = recipe_from_dict(tiny_recipe(tmp_path, embedding={"method": "hash", "budget": 0.5}))
    full = plan_tables(recipe, prepare(recipe.data, progress=False).schema, 2, None)
    assert 0 < full.method_bytes <= 0.5 * sum(t.rows * t.dim * 4 for t in full.tables)
    assert f"holding its whole storage ({full.method_bytes / 1e6:,.2f} MB of weights" in capsys.readouterr().out


@pytest.mark.parametrize("embedding, message", [
    ({"method": "full", "budget": 0.5}, "embedding.budget: 0.5 is too small for full"),
    ({"method": "hash", "budget": None}, "embedding.budget: hash sizes its storage from a budget"),
    ({"method": "mgqe", "budget": 0.01}, "embedding.budget: 0.01 is too small for mgqe"),
    ({"gradients": "dense", "dense_max_mb": 0.001}, "embedding.gradients: dense gradients need tables of at most"),
])
def test_a_method_training_refuses_to_build_is_refused(tmp_path, capsys, embedding, message):
    """The plan builds the method as training does (a full recipe with a budget below 1
    planned without a word; training refuses it)."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, embedding=embedding)))
    assert main(["plan", str(path), "--world-size", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_an_impossible_memory_is_the_planners_reason_exit_2(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    assert main(["plan", str(path), "--world-size", "2", "--memory-per-rank", "1KB"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ctr: error: no sharding plan fits: Unable to find a plan") and "\n" not in err
    assert "embedding.budget <=" in err


def test_a_memory_that_holds_the_tables_but_not_the_planners_storage_suggests_no_budget(tmp_path, capsys):
    """300KB a rank holds the tiny tables (75 KB with Adagrad's state) but not the planner's
    own storage: no budget above 1 ("embedding.budget <= 8.14 would fit") is suggested."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    assert main(["plan", str(path), "--world-size", "2", "--memory-per-rank", "300KB"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ctr: error: no sharding plan fits") and "embedding.budget" not in err, err
    assert err.endswith("which the ranks hold; the rest is the planner's own storage per rank)"), err


def test_sizes_parse_with_units():
    assert parse_bytes("16GB") == 16 * 10**9 and parse_bytes("512MiB") == 512 * 2**20 and parse_bytes("2e3") == 2000
    for bad in ("lots", "0", "0GB", "1.2.3GB", "1e400GB"):  # 0: the planner's default; 1e400: an OverflowError
        with pytest.raises(UserError, match=f"^--memory-per-rank: expected a size such as 16GB or 512MiB, got '{bad}'$"):
            parse_bytes(bad)


@pytest.mark.parametrize("overrides, message", [
    (["train.embedding_optimizer.name=sparse_adam"], "train.embedding_optimizer.name: sharded tables train with"),
    (["embedding.method=hash", "embedding.budget=0.5", "distributed.sharding=table_wise"],
     "distributed.sharding: table_wise needs plain tables"),
    (["embedding.dim=6", "distributed.tables.C3=row_wise"], "embedding.dim: 6 is not a multiple of 4"),
    (["trainer.accelerator=tpu"], "trainer.accelerator: 'tpu': choose from cpu, gpu, cuda, auto"),  # a GPU plan was shown
])
def test_tables_that_training_refuses_are_refused_before_the_data_is_read(tmp_path, capsys, overrides, message):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    assert main(["plan", str(path), "--world-size", "2", *[arg for o in overrides for arg in ("-o", o)]]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert not (tmp_path / "cache").exists()


def test_a_world_size_that_training_refuses_is_refused_before_the_data_is_read(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    overrides = ["-o", "train.batch_size=64", "-o", "train.eval_batch_size=63"]
    assert main(["plan", str(path), "--world-size", "3", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "ctr: error: train.batch_size: 64 and eval_batch_size 63 must be multiples of the 3 processes", err
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("dim, world, ranks", [(8, 3, [0, 1]), (12, 2, [0, 1, 0]), (8, 2, [0, 1])])
def test_a_written_plan_splits_column_wise_tables_in_widths_fbgemm_takes(dim, world, ranks):
    """The plan ctr writes when a table is row-wise: a column-wise table in shards of 4 columns
    dealt round the ranks where D / world is no multiple of 4 dividing D (D = 8 on 3 ranks was
    torchrec's ValueError "cannot be evenly divided", D = 12 on 2 ranks one shard on rank 0)."""
    import torch
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    from ctr.train.sharded import written_plan

    ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name=name, embedding_dim=dim, num_embeddings=10,
                                                            feature_names=[name]) for name in ("a", "b")],
                                 device=torch.device("meta"))
    plan = written_plan(ebc, {"a": "column_wise", "b": "row_wise"}, world, "cpu", EmbeddingBagCollectionSharder())
    shards = plan.plan["embedding.ebc"]["a"].sharding_spec.shards
    assert [shard.placement.rank() for shard in shards] == ranks
    assert [shard.shard_sizes[1] for shard in shards] == [dim // len(ranks)] * len(ranks)


def test_the_budget_suggested_for_a_replicated_method_is_what_one_rank_holds(tmp_path, capsys):
    """``hash`` and ``unified`` train data-parallel, every rank holding their whole storage: the
    budget that fits does not grow with the ranks (it was the ranks' memory summed, 2x too
    much on 2 ranks)."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    suggested = []
    for ranks in ("1", "2"):
        assert main(["plan", str(path), "--world-size", ranks, "--memory-per-rank", "1KB"]) == 2
        suggested.append(capsys.readouterr().err.strip().rpartition("embedding.budget <= ")[2])
    assert suggested[0] == suggested[1] and suggested[0].endswith(" would fit)"), suggested
