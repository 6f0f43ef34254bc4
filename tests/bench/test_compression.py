import csv
import os
import shutil
import signal
import subprocess
import sys
import logging

import pytest
import yaml

from ctr.bench.compression import Results, markdown, run_compression
from ctr.cli import main
from ctr.bench.grid import Cell, cell_recipe, check_settings, embedding_keys, method_options, plan
from ctr.metrics import mean_std
from ctr.errors import RecipeError, UserError
from tests.conftest import tiny_recipe

pytestmark = pytest.mark.slow  # end-to-end runs: `make test` runs them, `make test-fast` does not


def test_plan_runs_full_once_per_seed_and_validates_its_arguments():
    cells = plan(["full", "hash"], [0.5, 0.1], 2)
    assert [c.key for c in cells] == ["full-full-s0", "full-full-s1", "hash-0.5-s0", "hash-0.5-s1", "hash-0.1-s0", "hash-0.1-s1"]
    with pytest.raises(RecipeError, match="--methods: unknown embedding method 'zip'"):
        plan(["zip"], [0.5], 1)
    with pytest.raises(UserError, match=r"--budgets: 2.0 is not in \(0, 1\]"):
        plan(["hash"], [2.0], 1)
    with pytest.raises(UserError, match=r"^--methods: hash given twice"):
        plan(["hash", "hash"], [0.5], 1)
    with pytest.raises(UserError, match=r"^--budgets: 0.5 given twice"):
        plan(["hash"], [0.5, 0.50], 1)  # one cell, one run directory: two jobs wrote it at once
    with pytest.raises(UserError, match=r"^--budgets: 0.1 given twice"):
        plan(["hash"], [0.1, 0.1000001], 1)  # two budgets, one key: the second re-read the first's run
    with pytest.raises(UserError, match=r"^--methods: give at least one"):
        plan([], [0.5], 1)
    with pytest.raises(UserError, match=r"^--budgets: give at least one budget"):
        plan(["hash"], [], 1)
    assert [c.key for c in plan(["full"], [], 1)] == ["full-full-s0"]


@pytest.mark.parametrize("seed, seeds", [(42, 2**70), (4294967294, 3)])
def test_seeds_past_numpys_largest_are_refused_before_any_cell(tmp_path, seed, seeds):
    """``--seeds 2**70`` built that many cells (the command hung); ``seed: 4294967294`` with
    ``--seeds 3`` trained the first two and recorded the third's seed error as its row."""
    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, seed=seed)))
    message = f"^--seeds: {seeds} seeds from seed {seed} pass 4294967295, numpy's largest; give fewer seeds or a lower seed$"
    with pytest.raises(UserError, match=message):
        run_compression(recipe, ["full"], [], seeds, tmp_path / "bench", [])
    assert not (tmp_path / "bench").exists()


def test_table_reports_mean_and_spread_and_unreachable_cells():
    rows = [
        {"method": "hash", "budget": "0.5", "status": "ok", "test_auc": a, "test_logloss": "0.5", "train_seconds": "3",
         "embedding_bytes": "100", "memory_ratio": "0.5", "inference_seconds": "0.5"} for a in ("0.70", "0.72", "0.74")
    ] + [{"method": "hash", "budget": "0.01", "status": "cannot reach (min 0.02)", "test_auc": ""}]
    text = markdown(rows)
    assert "| hash |  | 0.7200 ± 0.0200 | cannot reach (min 0.02) |" in text
    single = markdown([{**rows[0], "budget": "0.1", "inference_rows_per_s": "1000"}])
    assert "| hash |  | 0.7000 |" in single and "| 0.7000 | 0.5000 | 3.0 | 1,000 |" in single  # no spread of one seed
    assert "| 0.5000 ± 0.0000 | 3.0 ± 0.0 |" in text  # runs under 10 s in tenths (whole seconds read 3 ± 0, or 0 ± 0)
    slow = markdown([{**row, "train_seconds": str(s)} for row, s in zip(rows[:3], (91.4, 92.6, 93.1))])
    assert "| 92 ± 1 |" in slow
    assert mean_std([1.0]) == (1.0, 0.0)


def test_one_command_runs_every_cell_on_jobs_at_once_and_skips_finished_ones(tmp_path, caplog, monkeypatch):
    """4 cells on 2 jobs: the job that ends first takes the next; the rows of all in one file,
    the table in the grid's order (not the finishing one); the rerun skips every cell."""
    monkeypatch.setattr("ctr.bench.compression.usable_cores", lambda: 2)  # 2 jobs, on a machine of one core too
    raw = tiny_recipe(tmp_path, train={"epochs": 1})
    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    (tmp_path / "hash.yaml").write_text(yaml.safe_dump({"embedding": {"method": "hash", "dim": 4, "budget": 0.9}}))
    out = tmp_path / "bench"
    results = run_compression(recipe, ["hash", "full"], [0.25], 2, out, [], jobs=2)
    with (out / "results.csv").open() as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: (row["method"], row["seed"]))  # in the finishing order
    assert [(r["method"], r["budget"], r["seed"], r["status"]) for r in rows] == [
        ("full", "", "0", "ok"), ("full", "", "1", "ok"), ("hash", "0.25", "0", "ok"), ("hash", "0.25", "1", "ok")
    ]
    assert len(results.rows) == 4
    hashed = yaml.safe_load((out / "runs" / "hash-0.25-s1" / "recipe.yaml").read_text())
    assert hashed["embedding"]["budget"] == 0.25 and hashed["embedding"]["dim"] == 8  # the cell's budget, the recipe's dim
    assert hashed["seed"] == raw.get("seed", 42) + 1
    for row in rows:
        assert 0 < float(row["test_auc"]) <= 1 and float(row["inference_seconds"]) > 0
        assert float(row["inference_rows_per_s"]) > 0 and 100 < float(row["peak_rss_mib"]) < 20_000  # a child's own
    assert float(rows[2]["memory_ratio"]) <= 0.25
    assert (out / "auc_vs_memory.png").stat().st_size > 0

    stored = Results(out / "results.csv")
    stored.rows = []
    for row in rows:  # as if the cells had finished in the reverse of the grid's order (full's first)
        stored.add(row)
    caplog.set_level(logging.INFO, logger="ctr.bench")
    run_compression(recipe, ["hash", "full"], [0.25], 2, out, [], jobs=2)
    assert sum("finished earlier, skipped" in m for m in caplog.messages) == 4
    with (out / "results.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 4
    table = (out / "results.md").read_text()
    assert table.index("| hash | 0.25 |") < table.index("| full | full |")  # the grid's order
    assert Cell("hash", 0.25, 1).key == "hash-0.25-s1"
    with pytest.raises(UserError, match="--jobs: must be >= 1, got 0"):
        run_compression(recipe, ["hash"], [0.5], 1, out, [], jobs=0)


def test_a_fused_recipe_stays_fused_only_for_methods_with_a_kernel_table(tmp_path):
    raw = tiny_recipe(tmp_path, train={"embedding_optimizer": {"name": "adagrad", "lr": 0.05, "fused": True}})
    fused = {m: cell_recipe(raw, [], tmp_path / "base.yaml", Cell(m, 0.5, 0), tmp_path)["train"]["embedding_optimizer"]
             for m in ("full", "hash", "robe", "dhe")}
    assert {m: o["fused"] for m, o in fused.items()} == {"full": True, "hash": True, "robe": False, "dhe": False}
    assert fused["robe"]["lr"] == 0.05 and raw["train"]["embedding_optimizer"]["fused"] is True  # the base untouched


def test_the_recipes_backend_reaches_the_cells_of_methods_that_read_it_only(tmp_path, caplog):
    """A recipe's ``embedding.backend`` is refused for a method that does its own lookups:
    a grid of both kinds runs, the backend in the cells that read it; a cell run by an
    earlier ctr (which kept the backend in every cell) is read as finished, not refused."""
    raw = tiny_recipe(tmp_path, embedding={"method": "full", "dim": 8, "backend": "torch"})
    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = tmp_path / "bench"
    with caplog.at_level(logging.INFO, logger="ctr.bench"):
        run_compression(recipe, ["hash", "robe"], [0.5], 1, out, [])
    assert "bench robe-0.5-s0: robe does its own lookups: the recipe's embedding.backend is left out" in caplog.messages
    with (out / "results.csv").open() as handle:
        assert [(r["method"], r["status"]) for r in csv.DictReader(handle)] == [("hash", "ok"), ("robe", "ok")]
    backends = {m: yaml.safe_load((out / "runs" / f"{m}-0.5-s0" / "recipe.yaml").read_text())["embedding"].get("backend")
                for m in ("hash", "robe")}
    assert backends == {"hash": "torch", "robe": None}
    for older in (out / "runs" / "robe-0.5-s0" / "recipe.yaml", out / "runs" / "robe-0.5-s0" / "schema" / "recipe.yaml"):
        older.write_text(older.read_text().replace("backend: null", "backend: torch"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ctr.bench"):
        run_compression(recipe, ["hash", "robe"], [0.5], 1, out, [])
    assert sum("finished earlier, skipped" in m for m in caplog.messages) == 2


def test_cli_with_a_relative_out_folder_prints_the_table(tmp_path, capsys, monkeypatch):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp_path, train={"epochs": 1})))
    monkeypatch.chdir(tmp_path)
    code = main(["bench", "compression", "base.yaml", "--methods", "hash", "--budgets", "0.5", "--seeds", "1",
                 "--out", "bench"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "| hash | 0.5 |" in out
    metrics = (tmp_path / "bench" / "runs" / "hash-0.5-s0" / "metrics.json").read_text()
    assert '"best_checkpoint": "checkpoints/best.ckpt"' in metrics


def test_a_budget_a_method_cannot_reach_is_a_cell_not_a_failure(tmp_path, caplog):
    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, train={"epochs": 1})))
    out = tmp_path / "bench"
    with caplog.at_level(logging.INFO, logger="ctr.bench"):
        run_compression(recipe, ["robe"], [0.001], 1, out, [])
    assert "robe-0.001-s0: training" not in caplog.text  # it said so, then refused the cell
    with (out / "results.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["status"].startswith("cannot reach (min 0.00") and row["test_auc"] == ""
    assert not (out / "runs" / "robe-0.001-s0").exists()  # nothing was trained
    assert "| robe |  | cannot reach (min 0.00" in (out / "results.md").read_text()


def test_a_refused_budget_is_asked_again_by_the_rerun(tmp_path):
    """A cell its method's settings could not fit has no run folder: once ``robe.yaml`` is
    changed so that the budget fits, the rerun trains the cell (the old refusal row was kept
    as if finished, with no run whose settings could be compared)."""
    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, train={"epochs": 1})))
    (tmp_path / "robe.yaml").write_text(yaml.safe_dump({"embedding": {"method": "robe", "block": 1}}))
    out = tmp_path / "bench"
    (row,) = run_compression(recipe, ["robe"], [0.006], 1, out, []).rows
    assert row["status"].startswith("cannot reach (min 0.007")
    assert run_compression(recipe, ["robe"], [0.006], 1, out, []).rows == [row]  # still refused: one row
    (tmp_path / "robe.yaml").write_text(yaml.safe_dump({"embedding": {"method": "robe", "block": 2}}))
    (row,) = run_compression(recipe, ["robe"], [0.006], 1, out, []).rows
    assert row["status"] == "ok" and float(row["memory_ratio"]) <= 0.006
    assert (out / "runs" / "robe-0.006-s0" / "metrics.json").exists()


def test_a_killed_cell_resumes_from_its_checkpoint_on_the_next_run(tmp_path):
    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, train={"epochs": 2})))
    out = tmp_path / "bench"
    run_compression(recipe, ["hash"], [0.5], 1, out, [])
    run = out / "runs" / "hash-0.5-s0"
    (run / "metrics.json").unlink()  # as if killed after its last checkpoint, before the metrics
    with (out / "results.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    results = Results(out / "results.csv")
    results.rows = []
    results.add({**row, "status": "failed (exit -9)", "test_auc": ""})
    rerun = run_compression(recipe, ["hash"], [0.5], 1, out, [])
    assert [(r["status"], r["test_auc"]) for r in rerun.rows] == [("ok", row["test_auc"])]
    assert (run / "metrics.json").exists()

    (out / "results.csv").unlink()  # the benchmark killed, its child finishing the cell alone
    (run / "bench.json").unlink()
    (row,) = run_compression(recipe, ["hash"], [0.5], 1, out, []).rows
    assert row["status"] == "ok" and row["peak_rss_mib"] == "" and row["test_auc"] == rerun.rows[0]["test_auc"]


def test_a_finished_cell_whose_generator_now_draws_other_rows_is_trained_again(tmp_path, caplog):
    """A cell's run on the rows synthetic generator 4 drew with ``interacting_pairs: 0``
    (every label 0; this ctr draws others) was reported as today's result, which ``ctr train
    --resume`` of it refuses."""
    import json

    from ctr.datasets.cache import KEY_FILE

    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, data={"interacting_pairs": 0})))
    out = tmp_path / "bench"
    run_compression(recipe, ["full"], [0.5], 1, out, [])
    key = out / "runs" / "full-full-s0" / "schema" / KEY_FILE
    saved = json.loads(key.read_text())
    key.write_text(json.dumps({**saved, "source": {**saved["source"], "generator": 4}}))
    caplog.set_level(logging.INFO, logger="ctr.bench")
    (row,) = run_compression(recipe, ["full"], [0.5], 1, out, []).rows
    assert [m for m in caplog.messages if "generator version" in m] == [
        "bench full-full-s0: synthetic generator version 4 drew its rows, and this ctr's version 5 draws others for "
        f"its recipe: its run is moved to {out / 'stale-runs' / 'full-full-s0'} and trained again"]
    assert row["status"] == "ok" and json.loads(key.read_text())["source"]["generator"] == 5
    stale = out / "stale-runs" / "full-full-s0" / "schema" / KEY_FILE
    assert json.loads(stale.read_text())["source"]["generator"] == 4
    assert not any("finished earlier" in m for m in caplog.messages)


def test_a_cell_killed_in_its_first_stage_resumes_on_the_next_run(tmp_path, caplog):
    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, train={"epochs": 1})))
    out = tmp_path / "bench"
    (row,) = run_compression(recipe, ["pep"], [0.5], 1, out, []).rows
    run = out / "runs" / "pep-0.5-s0"
    # as if killed after the search stage's checkpoint, before the stage ended
    for path in ["metrics.json", "checkpoints", "stages/progress.json", "stages/1-mask", "stages/2-retrain"]:
        shutil.rmtree(run / path) if (run / path).is_dir() else (run / path).unlink()
    assert (run / "stages" / "0-search" / "checkpoints" / "last.ckpt").exists()
    (out / "results.csv").unlink()
    with caplog.at_level(logging.INFO, logger="ctr.bench"):
        (again,) = run_compression(recipe, ["pep"], [0.5], 1, out, []).rows
    assert "pep-0.5-s0: resuming its interrupted run" in caplog.text
    assert again["status"] == "ok" and again["test_auc"] == row["test_auc"]


def test_dropped_checkpoints_leave_each_cell_its_metrics_and_stage_outputs(tmp_path):
    """A multi-stage cell (DeepLight: its last stage's checkpoints in the run's own folder, as a
    one-stage cell keeps them, and its earlier stages' in theirs) keeps no checkpoint of any."""
    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, train={"epochs": 1})))
    out = tmp_path / "bench"
    results = run_compression(recipe, ["deeplight"], [0.5], 1, out, [], drop_checkpoints=True)
    assert [r["status"] for r in results.rows] == ["ok"]
    run = out / "runs" / "deeplight-0.5-s0"
    assert list(run.rglob("*.ckpt")) == [] and list(run.rglob("checkpoints")) == []
    assert (run / "stages" / "progress.json").exists()
    assert (run / "metrics.json").exists() and (run / "recipe.yaml").exists()


def test_sigterm_stops_the_benchmark_and_its_training_child_and_the_rerun_resumes(tmp_path):
    """The benchmark's SIGTERM reaches the cell training in a child (it went on alone) and no
    cell starts after it; the command exits 143 (a rerun resumes the cell: the killed-cell tests above)."""
    import os
    import signal
    import time

    raw = tiny_recipe(tmp_path, data={"rows": 30000}, train={"epochs": 20, "early_stop": None})
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "ctr", "bench", "compression", str(tmp_path / "base.yaml"), "--methods", "hash",
               "--budgets", "0.5,0.1", "--seeds", "1", "--out", str(out)]
    bench = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list((out / "runs").glob("*/checkpoints/last.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.5)  # the first cell has checkpointed: it trains in its child
    os.kill(bench.pid, signal.SIGTERM)
    _, err = bench.communicate(timeout=120)
    assert bench.returncode == 143, err[-2000:]
    assert "ctr: terminated (SIGTERM); the same command continues" in err
    assert not (out / "runs" / "hash-0.1-s0").exists()  # no cell started after the signal
    assert not (out / "runs" / "hash-0.5-s0" / "metrics.json").exists()  # the child stopped, not finished
    assert "ctr: terminated (SIGTERM)" in (out / "logs" / "hash-0.5-s0.log").read_text()


def test_a_rerun_of_other_settings_into_the_same_out_is_refused_before_any_training(tmp_path):
    """Cells were matched by method, budget and seed only: another -o (or a changed
    ``<method>.yaml``) into the same --out skipped finished cells, trained new ones into the same
    table with other settings, and resumed an interrupted cell with its old settings."""
    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, train={"epochs": 1})))
    (tmp_path / "robe.yaml").write_text(yaml.safe_dump({"embedding": {"method": "robe", "block": 1}}))
    out = tmp_path / "bench"
    (row,) = run_compression(recipe, ["robe"], [0.5], 1, out, []).rows
    with pytest.raises(UserError, match=r"bench: holds runs of other settings \(embedding.dim: 8 before, 4 now\); "
                                        r"choose another --out"):
        run_compression(recipe, ["hash"], [0.5], 1, out, ["embedding.dim=4"])
    (out / "base.yaml").unlink()  # an out of an earlier ctr: its runs' recipes still tell
    (tmp_path / "robe.yaml").write_text(yaml.safe_dump({"embedding": {"method": "robe", "block": 2}}))
    with pytest.raises(UserError, match=r"holds runs of other settings \(robe-0.5-s0: embedding.block: 1 before, 2 now\)"):
        run_compression(recipe, ["robe"], [0.5], 1, out, [])
    assert not (out / "runs" / "hash-0.5-s0").exists()
    (tmp_path / "robe.yaml").write_text(yaml.safe_dump({"embedding": {"method": "robe", "block": 1}}))
    assert run_compression(recipe, ["robe"], [0.5], 1, out, []).rows == [row]


def test_method_options_given_with_o_reach_every_cells_method_and_its_method_and_budget_are_refused(tmp_path):
    """``-o embedding.block=2`` was dropped (the cell's block kept dim, init_std and backend only)."""
    options = method_options(["embedding.block=2", "embedding.dim=16", "train.epochs=2"])
    assert options == ["embedding.block=2"]
    raw = cell_recipe(tiny_recipe(tmp_path), options, tmp_path / "base.yaml", Cell("robe", 0.5, 0), tmp_path)
    assert raw["embedding"] == {"method": "robe", "dim": 8, "block": 2, "budget": 0.5}
    for key in ("method", "budget"):
        with pytest.raises(UserError, match=f"^-o embedding.{key}: each cell's method and budget come from --methods"):
            method_options([f"embedding.{key}=robe"])


def test_a_mapping_of_the_embedding_section_sets_each_of_its_keys_in_every_cell(tmp_path):
    """``-o embedding={block: 3, dim: 4}`` kept the mapping's dim and dropped its block: the robe
    cell trained block 1 (its base recipe's embedding section replaced, its cells built from
    the method's own block). Block 3 must divide dim 4: the cell is refused, nothing trains."""
    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, embedding={"init_std": 0.5})))
    (row,) = run_compression(recipe, ["robe"], [0.5], 1, tmp_path / "bench", ["embedding={block: 3, dim: 4}"]).rows
    assert row["status"] == "error: embedding.block: 3 must divide dim 4", row
    with pytest.raises(UserError, match="^-o embedding.method: each cell's method and budget come from --methods"):
        run_compression(recipe, ["robe"], [0.5], 1, tmp_path / "bench", ["embedding={method: hash}"])
    raw = cell_recipe(tiny_recipe(tmp_path, embedding={"init_std": 0.5}), method_options(
        embedding_keys(["embedding={block: 2, stages: null}"])), recipe, Cell("robe", 0.5, 0), tmp_path)
    assert raw["embedding"] == {"method": "robe", "dim": 8, "init_std": 0.5, "block": 2, "stages": None, "budget": 0.5}


@pytest.mark.parametrize("data, overrides, message", [
    ({}, ["model.hiden=[4]"], "model.hiden: unknown key"),
    ({"dataset": "criteo", "path": "/nonexistent/train.txt"}, [], "/nonexistent/train.txt does not exist"),
    ({}, ["seed=abc"], "seed: expected int, got 'abc'"),  # these four were tracebacks building the cells
    ({}, ["seed=null"], "seed: expected int, got None"),
    ({}, ["embedding=full"], "embedding: expected a mapping, got 'full'"),
    ({}, ["train=5"], "train: expected a mapping, got 5"),
    ({}, ["seed=1.5"], "seed: expected int, got 1.5"),  # it trained seed 1
])
def test_an_error_every_cell_shares_ends_the_command_before_any_cell(tmp_path, data, overrides, message):
    """A bad -o or data path was one error row per cell, and the command exited 0."""
    raw = tiny_recipe(tmp_path)
    raw["data"] = {**raw["data"], **data} if not data else {**data, "cache_dir": str(tmp_path / "cache")}
    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=f"^{recipe} \\(with its -o\\): .*{message}"):
        run_compression(recipe, ["full", "hash"], [0.5], 2, tmp_path / "bench", overrides)
    assert not (tmp_path / "bench" / "results.csv").exists()
    assert not (tmp_path / "bench" / "base.yaml").exists()  # its rerun with the recipe fixed is not another setting's


def test_a_method_yaml_whose_embedding_is_not_a_mapping_is_one_line_naming_it(tmp_path):
    (tmp_path / "hash.yaml").write_text("embedding: hash\n")
    with pytest.raises(UserError, match=f"^{tmp_path / 'hash.yaml'}: embedding: expected a mapping, got 'hash'$"):
        cell_recipe(tiny_recipe(tmp_path), [], tmp_path / "base.yaml", Cell("hash", 0.5, 0), tmp_path)


def test_a_command_whose_every_cell_recipe_is_refused_leaves_no_base_yaml(tmp_path):
    """No cell trained (each refused the -o its method lacks), yet base.yaml was written: the
    rerun with that -o dropped was refused as another setting's."""
    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, embedding={"method": "robe", "budget": 0.5})))
    out = tmp_path / "bench"
    results = run_compression(recipe, ["hash"], [0.5], 1, out, ["embedding.block=4"])
    assert results.unfinished(plan(["hash"], [0.5], 1)) == ["hash-0.5-s0"]
    assert results.rows[0]["status"].startswith("error: embedding.block: unknown key")
    assert not (out / "base.yaml").exists()
    check_settings(out, yaml.safe_load(recipe.read_text()), {}, results.holds_finished())  # the rerun without -o goes on


def test_cells_that_fail_make_the_command_fail_and_the_table_shows_the_asked_seeds(tmp_path, capsys, monkeypatch):
    """A cell's own error (ROBE's block must divide dim) is its row; the command exits 1
    naming it. A rerun asking fewer seeds reports those seeds only. (The command runs in this
    process, as ``python -m ctr`` runs it; its cells train in children.)"""
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp_path, train={"epochs": 1})))
    (tmp_path / "robe.yaml").write_text(yaml.safe_dump({"embedding": {"method": "robe", "block": 3}}))
    monkeypatch.chdir(tmp_path)
    command = ["bench", "compression", "base.yaml", "--budgets", "0.5", "--out", "bench"]
    code = main([*command, "--methods", "hash,robe", "--seeds", "2"])
    err = capsys.readouterr().err
    assert code == 1, err[-2000:]
    assert "ctr: 2 cells failed (robe-0.5-s0, robe-0.5-s1): their status is in the table above" in err
    assert "block: 3 must divide dim 8" in (tmp_path / "bench" / "results.md").read_text()
    code = main([*command, "--methods", "hash", "--seeds", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    assert "| hash | 0.5 |" in out and "\n2 cells (1 finished, 1 failed) in " in out  # hash's seed 0, robe's
    detail = next(line for line in out.splitlines() if line.startswith("| hash | 0.5 |"))
    assert detail.endswith("| 1 |") and " ± " not in detail


def test_a_cells_training_process_is_told_to_end_with_the_benchmark(tmp_path):
    """Its ``ctr train`` watches the benchmark's pid (``die_with_starter``): a benchmark killed
    by SIGKILL left it training, and the rerun's child was refused the run directory."""
    import os

    from ctr.bench.compression import Children

    with (tmp_path / "err").open("w") as stderr:
        child = Children().start([sys.executable, "-c", "import os, sys; sys.stderr.write(os.environ['CTR_STARTER_PID'])"],
                                 stderr)
        assert child.wait() == 0
    assert (tmp_path / "err").read_text() == str(os.getpid())


def test_a_grid_whose_cells_all_failed_before_training_takes_the_fixed_setting_into_the_same_out(tmp_path):
    """Every cell stopped on what the prepared data refuses (no run began); the command says
    "fix what it says, or run the same command again", yet the rerun with the fixed -o was
    refused as "holds runs of other settings" (base.yaml and the cells' recipe-only folders)."""
    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    out = tmp_path / "bench"
    failed = run_compression(recipe, ["full"], [], 1, out, ["train.eval_every_n_steps=1000"])
    assert failed.rows[0]["status"].startswith("error: train.eval_every_n_steps: 1000 is more than")
    (row,) = run_compression(recipe, ["full"], [], 1, out, ["train.eval_every_n_steps=5"]).rows
    assert row["status"] == "ok"
    with pytest.raises(UserError, match=r"holds runs of other settings \(train.eval_every_n_steps: 5 before, 4 now\)"):
        run_compression(recipe, ["full"], [], 1, out, ["train.eval_every_n_steps=4"])  # a finished cell: refused


def test_a_cell_that_failed_beside_finished_seeds_is_named_below_the_tables():
    """A failed seed of a group whose other seeds finished is listed with its status (the tables
    showed the finished seeds' figures alone, and the command said its status was there)."""
    ok = {"method": "full", "budget": "", "seed": "1", "status": "ok", "test_auc": "0.6", "test_logloss": "0.5",
          "train_seconds": "3", "embedding_bytes": "100", "memory_ratio": "1.0", "run_dir": "b/runs/full-full-s1"}
    failed = {"method": "full", "budget": "", "seed": "0", "status": "failed (exit -9, see b/logs/full-full-s0.log)",
              "test_auc": "", "run_dir": "b/runs/full-full-s0"}
    refused = {"method": "hash", "budget": "0.01", "seed": "0", "status": "cannot reach (min 0.02)", "test_auc": "",
               "run_dir": "b/runs/hash-0.01-s0"}
    text = markdown([failed, ok, refused])
    assert "| full | 0.6000 |" in text and text.count("cannot reach") == 2  # a refusal is its table entry only
    assert text.endswith("\n\nNot in the figures above:\n\n- `full-full-s0`: failed (exit -9, see b/logs/full-full-s0.log)\n")


def test_other_settings_are_refused_where_finished_rows_outlived_their_run_folders(tmp_path):
    """With the finished cells' run folders deleted (their rows kept), a rerun of another -o
    skipped those rows, trained the new cells with the new settings into the same table and
    rewrote base.yaml."""
    out, base = tmp_path / "bench", tiny_recipe(tmp_path, seed=3)
    out.mkdir()
    (out / "base.yaml").write_text(yaml.safe_dump(base))
    changed = {**base, "seed": 7}
    check_settings(out, changed, {}, finished=False)  # rows a rerun tries again hold no settings
    with pytest.raises(UserError, match=r"bench: holds runs of other settings \(seed: 3 before, 7 now\); choose"):
        check_settings(out, changed, {}, finished=True)


def test_a_cell_run_on_input_files_changed_since_is_refused(tmp_path):
    """A cell finished on a CSV file that was edited before the rerun kept its row, its
    figures (of the old rows) tabled beside cells trained on the new ones."""
    import json

    from ctr.datasets.cache import KEY_FILE, source_fingerprint
    from ctr.recipe import recipe_from_dict
    from ctr.train.rundir import RunDir

    rows, out = tmp_path / "rows.csv", tmp_path / "bench"
    rows.write_text("label,a\n1,u\n0,w\n")
    base = {**tiny_recipe(tmp_path), "data": {"dataset": "csv", "path": str(rows), "label": "label"}}
    recipe = recipe_from_dict(base)
    run = RunDir(out / "runs" / "full-full-s0")  # what a finished cell leaves
    run.write_recipe(recipe)
    run.metrics.write_text("{}")
    run.schema.mkdir()
    (run.schema / KEY_FILE).write_text(json.dumps({"source": source_fingerprint(recipe.data)}))
    (out / "base.yaml").write_text(yaml.safe_dump(base))
    check_settings(out, base, {"full-full-s0": recipe}, finished=True)  # the same input: kept
    rows.write_text("label,a\n1,u\n0,w\n1,w\n")
    with pytest.raises(UserError) as err:
        check_settings(out, base, {"full-full-s0": recipe}, finished=True)
    assert str(err.value) == (f"{out}: full-full-s0 trained on other data (input {rows} changed (its size)); its "
                              "result would be compared with runs on the data as it is now: restore it, or choose "
                              "another --out")


def test_a_cell_without_its_peak_memory_on_record_shows_a_dash_not_nan():
    """A cell read from a run its child finished as the benchmark stopped has no peak memory:
    the table read ``nan``."""
    row = {"method": "full", "budget": "", "seed": "0", "status": "ok", "test_auc": "0.6", "test_logloss": "0.5",
           "train_seconds": "3", "embedding_bytes": "100", "memory_ratio": "1.0", "inference_rows_per_s": "1000",
           "peak_rss_mib": "", "run_dir": "b/runs/full-full-s0"}
    assert "| 3.0 | 1,000 | – | 1 |" in markdown([row])


def test_a_method_yaml_gives_the_settings_of_its_own_methods_cells(tmp_path):
    """``robe.yaml`` naming hash trained hash in the robe cells, reported as ROBE's figures;
    one naming no method trained full tables in the hash cells (the recipe's default)."""
    (tmp_path / "robe.yaml").write_text("embedding: {method: hash, dim: 4}\n")
    message = f"^{tmp_path / 'robe.yaml'}: embedding.method: 'hash', not robe \\(this file gives robe's cells\\)$"
    with pytest.raises(UserError, match=message):
        cell_recipe(tiny_recipe(tmp_path), [], tmp_path / "base.yaml", Cell("robe", 0.5, 0), tmp_path)
    (tmp_path / "hash.yaml").write_text("embedding: {dim: 4}\n")
    block = cell_recipe(tiny_recipe(tmp_path), [], tmp_path / "base.yaml", Cell("hash", 0.5, 0), tmp_path)["embedding"]
    assert block == {"method": "hash", "dim": 8, "budget": 0.5}


def test_a_method_yaml_whose_method_is_null_gives_the_cells_method(tmp_path):
    """``method: null`` names no method, as a file without the key does (the docs: "one naming
    none is the method's"); it was refused as "None, not hash"."""
    (tmp_path / "hash.yaml").write_text("embedding: {method: null, dim: 4}\n")
    block = cell_recipe(tiny_recipe(tmp_path), [], tmp_path / "base.yaml", Cell("hash", 0.5, 0), tmp_path)["embedding"]
    assert block == {"method": "hash", "dim": 8, "budget": 0.5}


@pytest.mark.parametrize("name, out", [("base.yaml", "."), ("results.md", "."), ("hash-0.5-s0.yaml", "..")])
def test_an_out_whose_files_would_overwrite_the_recipe_is_refused_before_any_cell(tmp_path, name, out):
    """``ctr bench compression base.yaml --out .`` wrote its base.yaml (the recipe with its
    -o) over the recipe file itself; a recipe under OUT/recipes/ took its cell's recipe."""
    folder = tmp_path / "recipes" if out == ".." else tmp_path
    folder.mkdir(exist_ok=True)
    recipe = folder / name
    text = yaml.safe_dump(tiny_recipe(tmp_path, train={"epochs": 1}))
    recipe.write_text(text)
    message = f"^--out {folder / out}: the benchmark would write over its recipe {recipe}; choose another --out$"
    with pytest.raises(UserError, match=message):
        run_compression(recipe, ["hash"], [0.5], 1, folder / out, ["train.batch_size=128"])
    assert recipe.read_text() == text and not (tmp_path / "runs").exists()


def test_an_out_inside_a_file_is_one_line_naming_the_file(tmp_path, capsys):
    """It said 'cannot be written (file exists)', naming neither --out nor the file in the way."""
    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    assert main(["bench", "compression", str(recipe), "--methods", "full", "--out", str(recipe / "sub")]) == 2
    assert capsys.readouterr().err.strip() == (f"ctr: error: {recipe / 'sub'}: {recipe} is not a folder; "
                                               "choose another --out")


FRAGILE_METHOD = '''from dataclasses import dataclass

from ctr.embeddings.base import EmbeddingMethod
from ctr.embeddings.budget import BudgetUnreachableError
from ctr.recipe import EmbeddingConfig
from ctr.registry import EMBEDDINGS


@dataclass
class FragileConfig(EmbeddingConfig):
    method: str = "fragile"
    budget: float = 0.1


@EMBEDDINGS.register("fragile", config=FragileConfig)
class Fragile(EmbeddingMethod):
    """A plugin method with a bug below budget 0.3 that cannot reach the budgets above it."""

    def __init__(self, schema, config):
        super().__init__(schema, config)
        if config.budget < 0.3:
            raise ValueError(f"negative dimension -{config.budget}")
        raise BudgetUnreachableError("fragile", config.budget, 0.9, "too few rows")

    def embed_ids(self, feature, ids):
        raise NotImplementedError
'''


def test_a_method_that_crashes_at_one_budget_fails_that_cell_and_the_grid_goes_on(tmp_path, monkeypatch):
    """A plugin method whose constructor raised (not a UserError) while its budget was asked
    ended the whole benchmark with a traceback, the other cells cancelled and nothing recorded
    of it: its training in a child would have been a failed cell."""
    from ctr.registry import EMBEDDINGS

    monkeypatch.syspath_prepend(str(tmp_path))
    EMBEDDINGS.names()  # the built-ins registered before the copy: a test run alone found none after
    monkeypatch.setattr(EMBEDDINGS, "_entries", dict(EMBEDDINGS._entries))  # the plugin's method is forgotten after
    (tmp_path / "fragile_method.py").write_text(FRAGILE_METHOD)
    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, plugins=["fragile_method"])))
    out = tmp_path / "bench"
    try:
        results = run_compression(recipe, ["fragile"], [0.1, 0.5], 1, out, [])
    finally:  # the plugin's module is forgotten too, whatever the run raised
        sys.modules.pop("fragile_method", None)
    statuses = {row["budget"]: row["status"] for row in results.rows}
    log = out / "logs" / "fragile-0.1-s0.log"
    assert statuses == {"0.1": f"failed (ValueError: negative dimension -0.1, see {log})",
                        "0.5": "cannot reach (min 0.9)"}
    assert "Traceback" in log.read_text() and "negative dimension -0.1" in log.read_text()
    assert results.unfinished(plan(["fragile"], [0.1, 0.5], 1)) == ["fragile-0.1-s0"]  # retried by the rerun
    listed = f"- `fragile-0.1-s0`: {statuses['0.1']}"
    assert listed in (out / "results.md").read_text()


def test_a_data_error_while_a_budget_is_asked_is_not_the_methods(tmp_path, monkeypatch):
    """A disk full while the cells' data was read again to ask each budget failed every cell
    as "its method failed while its budget was asked": it ends the command, as a disk full does."""
    import ctr.train.refusal

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ctr.train.refusal, "prepare", full_disk)  # the data was prepared once, before any cell
    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    with pytest.raises(OSError, match="No space left on device"):
        run_compression(recipe, ["hash"], [0.5], 1, tmp_path / "bench", [])
    assert not (tmp_path / "bench" / "logs").exists()


@pytest.mark.parametrize("before, now", [({"init_std": "1e-2"}, {"init_std": 0.01}), ({}, {"init_std": 0.01})])
def test_a_rerun_whose_settings_are_spelt_otherwise_is_not_refused(tmp_path, before, now):
    """``-o embedding.init_std=1e-2`` (YAML reads it as text, the recipe as 0.01), then the same
    value written ``0.01`` or left to its default: the rerun was refused as "holds runs of other
    settings (embedding.init_std: '1e-2' before, 0.01 now)" (base.yaml was compared as written)."""
    out, base = tmp_path / "bench", tiny_recipe(tmp_path)
    out.mkdir()
    kept = {**base, "embedding": {**base["embedding"], **before}}
    (out / "base.yaml").write_text(yaml.safe_dump(kept))
    check_settings(out, {**base, "embedding": {**base["embedding"], **now}}, {}, finished=True)
    with pytest.raises(UserError, match=r"holds runs of other settings \(embedding.init_std: \S+ before, 0.02 now\)"):
        check_settings(out, {**kept, "embedding": {**kept["embedding"], "init_std": 0.02}}, {}, finished=True)


def test_a_rerun_of_other_settings_names_the_difference_of_the_read_recipes(tmp_path):
    """Kept ``init_std: '1e-2', dim: 8``, rerun ``init_std: 0.01, dim: 16``: the refusal named
    init_std (spelt otherwise, the same value) and hid the dim that changed."""
    out, base = tmp_path / "bench", tiny_recipe(tmp_path)
    out.mkdir()
    kept = {**base, "embedding": {"method": "full", "init_std": "1e-2", "dim": 8}}  # init_std compared first
    (out / "base.yaml").write_text(yaml.safe_dump(kept, sort_keys=False))
    now = {**base, "embedding": {"method": "full", "init_std": 0.01, "dim": 16}}
    with pytest.raises(UserError, match=r"holds runs of other settings \(embedding.dim: 8 before, 16 now\)"):
        check_settings(out, now, {}, finished=True)


def test_more_jobs_than_usable_cores_are_refused_before_any_cell(tmp_path, monkeypatch):
    """``--jobs 3`` on 2 cores trained 3 cells at once: their train seconds and rows/s measured
    the cells waiting for each other (and 64 jobs started 64 training processes)."""
    from ctr.bench import compression

    monkeypatch.setattr(compression, "usable_cores", lambda: 2)
    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    with pytest.raises(UserError, match=r"^--jobs: 3 is more than the 2 cores this process may run on \(cells"):
        run_compression(recipe, ["robe"], [0.001], 1, tmp_path / "bench", [], jobs=3)
    assert not (tmp_path / "bench").exists()
    run_compression(recipe, ["robe"], [0.001], 1, tmp_path / "bench", [], jobs=2)  # a refused cell: nothing trains


def test_jobs_times_explicit_threads_above_the_usable_cores_are_refused(tmp_path, monkeypatch):
    """``--jobs 2`` with ``trainer.num_threads: 2`` on 2 cores ran 4 threads on 2 cores."""
    from ctr.bench import compression

    monkeypatch.setattr(compression, "usable_cores", lambda: 2)
    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, trainer={"num_threads": 2})))
    message = r"^--jobs: 2 cells of trainer.num_threads 2 need 4 cores, more than the 2 this process may run on \("
    with pytest.raises(UserError, match=message):
        run_compression(recipe, ["robe"], [0.001], 1, tmp_path / "bench", [], jobs=2)
    assert not (tmp_path / "bench").exists()
    compression.check_jobs(1, {"trainer": {"num_threads": 2}})  # one job: its threads are the recipe's choice
    compression.check_jobs(2, {"trainer": {"num_threads": 1}})


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="2 cores")
def test_cells_on_jobs_at_once_train_on_cores_of_their_own(tmp_path):
    """Each cell's ``trainer.num_threads: auto`` (the default) took every core: ``--jobs 2`` on
    2 cores ran 2 threads a cell, the cells waiting for each other."""
    from ctr.bench.compression import Children

    children, started = Children(2), []
    for number in range(3):  # the first two at once; the third takes the cores the first gave back
        with (tmp_path / f"{number}.txt").open("w") as stderr:
            started.append(children.start([sys.executable, "-c", "import os, sys; "
                                           "print(sorted(os.sched_getaffinity(0)), file=sys.stderr)"], stderr))
        started[-1].wait()
        if number == 1:
            children.ended(started[0])
    seen = [(tmp_path / f"{number}.txt").read_text().strip() for number in range(3)]
    cores = sorted(os.sched_getaffinity(0))
    assert seen[0] != seen[1] and seen[2] == seen[0] and len(yaml.safe_load(seen[0])) == len(cores) // 2
    assert sorted(yaml.safe_load(seen[0]) + yaml.safe_load(seen[1])) == cores[: len(cores) // 2 * 2]


def test_a_method_yaml_gives_no_dim_init_std_or_backend_where_the_recipe_leaves_them_to_their_defaults(tmp_path):
    """A recipe without ``embedding.dim`` (its default) took ``dim: 4`` from ``hash.yaml``: the
    hash cells trained at another dim than the full ones, their budgets fractions of other
    tables (the docs: dim, init_std and backend are always the recipe's)."""
    base = tiny_recipe(tmp_path, embedding={"method": "full"})
    del base["embedding"]["dim"]
    (tmp_path / "hash.yaml").write_text("embedding: {method: hash, dim: 4, init_std: 0.5, backend: torch}\n")
    block = cell_recipe(base, [], tmp_path / "base.yaml", Cell("hash", 0.5, 0), tmp_path)["embedding"]
    assert block == {"method": "hash", "budget": 0.5}


def test_a_method_yamls_keys_left_out_are_logged_once_and_only_where_they_differ(tmp_path, caplog):
    """``hash.yaml``'s ``dim: 4`` was dropped without a word: its author read the cells as
    trained at dim 4. Then the line was logged once per cell (methods × budgets × seeds), and
    for a value the recipe's equals (nothing the cells train otherwise)."""
    from ctr.bench.compression import check_grid

    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, embedding={"method": "full", "dim": 8})))
    sibling = tmp_path / "hash.yaml"
    sibling.write_text("embedding: {method: hash, dim: 4, init_std: 0.01, backend: torch}\n")
    with caplog.at_level(logging.INFO, logger="ctr.bench"):
        grid = check_grid(recipe, ["hash", "full"], [0.5, 0.25], 2, tmp_path / "bench", [])
    assert grid.raws["hash-0.5-s0"]["embedding"]["dim"] == 8
    said = [r.getMessage() for r in caplog.records if str(sibling) in r.getMessage()]
    assert said == [f"bench: {sibling}: embedding.dim 4 and embedding.backend \"torch\" are left out (every cell's "
                    "is the recipe's, or its default: 8 and null)"]


def test_a_method_yamls_value_spelt_otherwise_is_not_logged_and_a_bad_base_value_is_the_recipes_error(tmp_path,
                                                                                                      caplog):
    """The values were compared as written (``1e-2``, text to YAML, against 0.01), and a base
    value no recipe takes (a date) was a TypeError traceback as the line was built, not the
    recipe's one-line error."""
    from ctr.bench.compression import check_grid

    recipe, sibling = tmp_path / "base.yaml", tmp_path / "hash.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, embedding={"method": "full", "dim": 8})))
    sibling.write_text("embedding: {method: hash, init_std: 1e-2}\n")
    with caplog.at_level(logging.INFO, logger="ctr.bench"):
        grid = check_grid(recipe, ["hash"], [0.5], 1, tmp_path / "bench", [])
    assert "hash-0.5-s0" in grid.recipes  # a cell trained: its recipe's values were compared
    assert not [r for r in caplog.records if str(sibling) in r.getMessage()]
    sibling.write_text("embedding: {method: hash, dim: 4}\n")
    recipe.write_text(recipe.read_text().replace("dim: 8", "dim: 2024-01-01"))
    with pytest.raises(UserError, match="embedding.dim: expected int"):
        check_grid(recipe, ["hash"], [0.5], 1, tmp_path / "bench", [])


@pytest.mark.parametrize("argv, said", [
    (["--methods", "full", "-o", "train.optimizer.lr=-1"], "train.optimizer.lr: must be > 0"),
    (["--methods", "zip"], "--methods: unknown embedding method 'zip'"),
    (["--methods", "hash", "--budgets", "2"], "--budgets: 2.0 is not in (0, 1]"),
    (["--methods", "full", "--seeds", "0"], "--seeds: must be >= 1, got 0"),
    (["--methods", "full", "--jobs", "0"], "--jobs: must be >= 1, got 0"),
], ids=["recipe", "method", "budget", "seeds", "jobs"])
def test_a_refused_recipe_method_budget_or_flag_is_said_before_the_lock(tmp_path, capsys, argv, said):
    """The lock beside --out was taken before the recipe, its methods, budgets and flags were
    checked: a second command with a bad recipe was told another ctr process writes its --out
    (not what was wrong), and the lock made --out's parent. Checked first, nothing is made."""
    from ctr.train.rundir import held

    recipe = tmp_path / "base.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    out = tmp_path / "new" / "bench"
    assert main(["bench", "compression", str(recipe), *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ctr: error: ") and said in err, err
    assert not (tmp_path / "new").exists()
    (tmp_path / "new").mkdir()
    with held(out, "is writing results in this folder"):  # another benchmark writing into --out
        assert main(["bench", "compression", str(recipe), *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert said in err and "another ctr process" not in err, err


def test_a_cell_its_cores_cannot_be_given_runs_unpinned_and_is_stopped_with_the_rest(tmp_path, monkeypatch, caplog):
    """An OSError of ``sched_setaffinity`` other than ProcessLookupError escaped ``start``
    after the child had started, unregistered: ``stop`` never ended it."""
    from ctr.bench import compression
    from ctr.bench.compression import Children

    monkeypatch.setattr(compression, "core_slices", lambda jobs: [{0}])
    children = Children(2)

    def refused(pid, cores):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "sched_setaffinity", refused, raising=False)
    with (tmp_path / "err").open("w") as stderr, caplog.at_level(logging.WARNING, logger="ctr.bench"):
        child = children.start([sys.executable, "-c", "import time; time.sleep(60)"], stderr)
    children.stop()
    assert child.wait(timeout=30) == -signal.SIGTERM
    assert "cannot pin a cell's training to cores 0 ([Errno 22] Invalid argument): it runs on any core" in caplog.text


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this system")
def test_a_start_where_cores_cannot_be_pinned_chains_to_no_affinity_error(monkeypatch):
    """A cell whose cores could not be set started inside the handler of that error: a start
    that then failed (no memory, no executable) was told "during handling of" the affinity's."""
    from ctr.bench.compression import _pinned

    def refused(pid, cores):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setaffinity", refused)
    with pytest.raises(RuntimeError) as caught, _pinned({0}):
        raise RuntimeError("the start failed")
    assert caught.value.__context__ is None
