"""``ctr tune``: the grid, the choice on validation only, seeds of the choice, reruns."""

import csv
import subprocess
import sys

import pytest
import yaml

from ctr.errors import UserError
from ctr.recipe import load_recipe
from ctr.train.tune import Tuning, parse_grid
from tests.conftest import tiny_recipe


def test_grid_is_every_combination_and_lists_stay_whole():
    points = parse_grid(["model.dropout=0,0.2", "model.hidden=[8,8],[16]"])
    assert [p.overrides for p in points] == [
        ("model.dropout=0", "model.hidden=[8,8]"), ("model.dropout=0", "model.hidden=[16]"),
        ("model.dropout=0.2", "model.hidden=[8,8]"), ("model.dropout=0.2", "model.hidden=[16]"),
    ]
    for bad in (["model.dropout"], ["model.dropout=0,"], ["model.dropout=0", "model.dropout=1"]):
        with pytest.raises(UserError, match="--grid"):
            parse_grid(bad)


class FakeTrainer:
    """Stands in for ``runner.train``: validation AUC rises with the embedding lr, test AUC
    falls with it, so a choice made on test data would pick the other end of the grid."""

    def __init__(self):
        self.calls = []

    def __call__(self, recipe, out, resume):
        lr = recipe.train.embedding_optimizer.lr
        self.calls.append((lr, recipe.seed))
        return {"valid": {"auc": 0.6 + lr}, "test": {"auc": 0.8 - lr + recipe.seed * 1e-3, "logloss": 0.5}}


def _recipe_file(tmp_path, **sections):
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, **sections)))
    return path


def test_chooses_on_validation_then_runs_seeds_of_the_choice_only(tmp_path):
    trainer, out = FakeTrainer(), tmp_path / "tune"
    grid = parse_grid(["train.embedding_optimizer.lr=0.01,0.1,0.05"])
    best = Tuning(_recipe_file(tmp_path, seed=7), grid, 3, out, [], trainer).run()
    assert best.overrides == ("train.embedding_optimizer.lr=0.1",)
    assert trainer.calls == [(0.01, 7), (0.1, 7), (0.05, 7), (0.1, 8), (0.1, 9)]
    assert load_recipe(out / "best.yaml").train.embedding_optimizer.lr == 0.1
    table = (out / "results.md").read_text()
    assert "| p01 (chosen) | train.embedding_optimizer.lr=0.1 | 0.7000 |" in table
    assert "| 0.7000 ± 0.0000 | 0.7080 ± 0.0010 |" in table  # valid, then test over seeds 7, 8, 9
    rerun = FakeTrainer()
    Tuning(_recipe_file(tmp_path, seed=7), grid, 3, out, [], rerun).run()
    assert rerun.calls == []


def test_a_minimised_monitor_chooses_the_lowest(tmp_path):
    trainer = FakeTrainer()
    recipe = _recipe_file(tmp_path, train={"early_stop": {"monitor": "valid/auc", "mode": "min"}})
    best = Tuning(recipe, parse_grid(["train.embedding_optimizer.lr=0.1,0.01"]), 1, tmp_path / "t", [], trainer).run()
    assert best.overrides == ("train.embedding_optimizer.lr=0.01",)


def test_a_bad_point_is_refused_before_any_training(tmp_path):
    trainer = FakeTrainer()
    grid = parse_grid(["train.embedding_optimizer.lr=0.1,-1"])
    with pytest.raises(UserError, match=r"--grid train.embedding_optimizer.lr=-1: .*lr must be > 0"):
        Tuning(_recipe_file(tmp_path), grid, 1, tmp_path / "t", [], trainer).run()
    assert trainer.calls == []


def test_points_whose_method_refuses_the_budget_are_listed_not_trained(tmp_path):
    """A method × budget grid pairs mgqe with a budget it cannot reach on the tiny schema:
    the other points train and are ranked; that one is named with its minimum."""
    trainer = FakeTrainer()
    recipe = _recipe_file(tmp_path, embedding={"method": "hash", "dim": 8})
    grid = parse_grid(["embedding.method=hash,mgqe", "embedding.budget=0.1,0.5"])
    best = Tuning(recipe, grid, 1, tmp_path / "t", [], trainer).run()
    assert len(trainer.calls) == 2 and best.overrides[0] == "embedding.method=hash"
    table = (tmp_path / "t" / "results.md").read_text()
    assert "- `embedding.method=mgqe embedding.budget=0.1`: cannot reach (min " in table
    everything_refused = parse_grid(["embedding.method=mgqe", "embedding.budget=0.1"])
    with pytest.raises(UserError, match=r"^--grid: no point can be trained"):
        Tuning(recipe, everything_refused, 1, tmp_path / "t2", [], trainer).run()


def test_cli_tunes_a_tiny_recipe_end_to_end(tmp_path):
    recipe = _recipe_file(tmp_path)
    out = tmp_path / "tune"
    args = [recipe, "--grid", "train.embedding_optimizer.lr=0.001,0.2", "--seeds", "2", "--out", out]
    done = subprocess.run([sys.executable, "-m", "ctr.cli", "tune", *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and {r["point"] for r in rows[2:]} <= {"p00", "p01"}
    chosen = max(rows[:2], key=lambda r: float(r["valid"]))
    assert rows[2]["point"] == chosen["point"] and rows[2]["seed"] == str(int(chosen["seed"]) + 1)
    assert "chosen:" in done.stdout and (out / "best.yaml").exists()
    bad = subprocess.run([sys.executable, "-m", "ctr.cli", "tune", str(recipe), "--grid", "model.hiden=1,2"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "model.hiden" in bad.stderr and "Traceback" not in bad.stderr
