"""One tiny training run through the CLI, then ``ctr eval`` on its run directory."""

import json
import logging
import subprocess
import sys

import pytest
import yaml

from tests.conftest import run_ctr, tiny_recipe

pytestmark = pytest.mark.slow  # end-to-end runs: `make test` runs them, `make test-fast` does not


def ctr(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ctr.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def run_cli(*args):
    """``ctr *args`` in this process (the code path of ``python -m ctr``): its exit code, stdout,
    stderr (its log lines and warnings included: ``run_ctr``)."""
    done = run_ctr(*args)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    recipe = tmp / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp, train={"epochs": 2})))
    result = ctr("train", recipe, "--out", tmp / "run")
    assert result.returncode == 0, result.stderr
    return tmp / "run", result


def test_run_dir_contents(finished_run):
    run, result = finished_run
    for name in ("recipe.yaml", "schema/schema.json", "schema/report.json", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt", "logs/metrics.csv", "curves.png", "metrics.json"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("valid", "test"):
        assert {"auc", "logloss"} <= set(metrics[split])
        assert 0.5 < metrics[split]["auc"] <= 1.0
    assert metrics["embedding_bytes"] == metrics["full_embedding_bytes"] > 0
    assert metrics["train_samples_per_s"] > 0 and metrics["epochs"] >= 1
    assert "test: auc" in result.stdout


def test_eval_reproduces_test_auc(finished_run):
    run, _ = finished_run
    code, out, err = run_cli("eval", run)
    assert code == 0, err
    again = json.loads(out)
    saved = json.loads((run / "metrics.json").read_text())["test"]
    assert abs(again["auc"] - saved["auc"]) < 1e-6
    assert abs(again["logloss"] - saved["logloss"]) < 1e-6


def test_refuses_to_overwrite_a_finished_run(finished_run):
    run, _ = finished_run
    code, _, err = run_cli("train", run / "recipe.yaml", "--out", run)
    assert code == 2 and "--resume" in err


@pytest.mark.parametrize(
    "override, key",
    [("train.batch_size=abc", "train.batch_size"), ("model.name=nosuchmodel", "model.name"),
     ("trian.epochs=1", "trian")],
)
def test_bad_recipe_exits_2_with_one_line(tmp_path, override, key):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    code, _, err = run_cli("train", recipe, "-o", override)
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and key in lines[0]


def test_misspelled_key_in_file(tmp_path):
    raw = tiny_recipe(tmp_path)
    raw["train"]["batch_szie"] = raw["train"].pop("batch_size")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    code, _, err = run_cli("train", recipe)
    assert code == 2 and err.strip().startswith("ctr: error: train.batch_szie: unknown key")


def test_models_lists_registries():
    code, out, _ = run_cli("models")
    assert code == 0
    for name in ("dlrm", "lr", "full", "synthetic", "adagrad"):
        assert name in out


def test_max_steps_before_first_validation_with_early_stopping(tmp_path):
    raw = tiny_recipe(tmp_path, train={"max_steps": 3, "early_stop": {"monitor": "valid/auc", "mode": "max"}})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    code, _, err = run_cli("train", recipe, "--out", tmp_path / "run")
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and "auc" in metrics["test"]


def test_log_names_the_run_directory_shows_progress_and_no_lightning_warnings(tmp_path):
    recipe = tmp_path / "r.yaml"
    # one thread: no oversubscription notice on a machine still busy (e.g. after the 2-process tests)
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, train={"epochs": 2}, trainer={"num_threads": 1})))
    result = ctr("train", recipe, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == f"run directory: {tmp_path / 'run'}"
    assert lines[-1].startswith(f"run directory: {tmp_path / 'run'} (metrics.json")
    progress = [line for line in lines if "of the epoch): loss" in line]
    assert len(progress) == 20 and progress[0].startswith("epoch 0 step 1 (1/10 of the epoch): loss ")
    assert not any("Warning" in line or "lightning" in line.lower() for line in lines), result.stderr


def test_eval_uses_the_runs_threads_and_reproduces_its_metrics_exactly(tmp_path):
    """A run trained on one thread (``trainer.num_threads: 1``): ``ctr eval`` summed on the
    machine's default threads, in another order, and its logloss differed in the 10th digit
    (``ctr predict`` takes the run's threads too)."""
    recipe = tmp_path / "r.yaml"
    raw = tiny_recipe(tmp_path, trainer={"num_threads": 1})
    raw["model"] = {"name": "lr"}  # a sum over every feature's weight: its order shows
    recipe.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    assert ctr("train", recipe, "--out", run).returncode == 0
    evaluated = ctr("eval", run)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout) == json.loads((run / "metrics.json").read_text())["test"]


def test_scoring_a_split_without_a_bar_logs_the_rows_scored(tmp_path, monkeypatch, caplog):
    """Off a terminal, validation and the best checkpoint's evaluations (in ctr train and ctr
    eval) showed no line while they scored: a Criteo-size split on a CPU scored for minutes
    in silence. Each logs the rows scored every PROGRESS_LOG_SECONDS (here 0: every batch of
    256), as training logs its steps."""
    from ctr.datasets import progress
    from ctr.recipe import recipe_from_dict
    from ctr.train.runner import evaluate, train

    monkeypatch.setattr(progress, "PROGRESS_LOG_SECONDS", 0.0)
    caplog.set_level(logging.INFO)
    raw = tiny_recipe(tmp_path, train={"eval_batch_size": 256}, trainer={"num_threads": 1})
    train(recipe_from_dict(raw), tmp_path / "run")
    scored = [m.split(" rows scored")[0] for m in caplog.messages if " rows scored (" in m]
    assert {"valid: scoring: 256", "valid: scoring: 512", "test: scoring: 256", "test: scoring: 512"} <= set(scored)
    caplog.clear()
    evaluate(tmp_path / "run")
    assert [m.split(" rows scored")[0] for m in caplog.messages if " rows scored (" in m][:2] == [
        "test: scoring: 256", "test: scoring: 512"]
