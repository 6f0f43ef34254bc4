"""Multi-stage methods trained end to end on tiny synthetic data: what each stage produced,
what the final model stores, resume after a kill between stages, and ``ctr eval``."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ctr.cli import main
from ctr.recipe import recipe_from_dict
from ctr.train.runner import train
from tests.conftest import run_ctr, tiny_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
# the threshold regularizer and its optimizer exactly as recipes/amazon_beauty/optembed.yaml sets them
OPTEMBED_RECIPE = yaml.safe_load((RECIPES / "amazon_beauty" / "optembed.yaml").read_text())["embedding"]
OPTEMBED = {
    "method": "optembed", "dim": 8, "budget": 0.5, "threshold_reg": OPTEMBED_RECIPE["threshold_reg"],
    "arch_optimizer": OPTEMBED_RECIPE["arch_optimizer"], "stages": {"supernet": {"epochs": 3}},
    "population": 8, "parents": 4, "mutations": 4, "crossovers": 4, "generations": 2,
}
DNIS = {"method": "dnis", "dim": 8, "budget": 0.3, "blocks": 4, "alpha_l1": 0.01, "arch_optimizer": {"name": "sgd", "lr": 0.05}}


def ctr(*args) -> tuple[int, str, str]:
    """``ctr args`` run in this process: its exit code, stdout and stderr (log lines and
    warnings included: ``run_ctr``)."""
    done = run_ctr(*args)
    return done.returncode, done.stdout, done.stderr


def summary(run, folder):
    return json.loads((run / "stages" / folder / "summary.json").read_text())


def staged_run(tmp_path_factory, embedding: dict):
    """A tiny synthetic run of a multi-stage method: its folder and metrics."""
    tmp = tmp_path_factory.mktemp(embedding["method"])
    metrics = train(recipe_from_dict(tiny_recipe(tmp, embedding=embedding)), tmp / "run")
    return tmp / "run", metrics


@pytest.fixture(scope="module")
def optembed_run(tmp_path_factory):
    return staged_run(tmp_path_factory, OPTEMBED)


@pytest.fixture(scope="module")
def dnis_run(tmp_path_factory):
    return staged_run(tmp_path_factory, DNIS)


def test_optembed_thresholds_move_and_prune_rows_at_the_recipes_settings(optembed_run):
    run, _ = optembed_run
    supernet = summary(run, "0-supernet")
    # from threshold_init 0: 3 epochs of about 10 steps of Adam at lr 0.01 move them by at most ≈ 0.3
    assert OPTEMBED_RECIPE["threshold_reg"] == 0.003 and OPTEMBED_RECIPE["arch_optimizer"]["lr"] == 0.01
    assert all(t > 0.2 for t in supernet["thresholds"].values())
    assert sum(supernet["kept_rows"].values()) < 0.95 * sum(supernet["rows"].values())
    output = torch.load(run / "stages" / "1-search" / "output.pt")
    assert output["row_keep"].sum() == sum(supernet["kept_rows"].values())


def test_optembed_search_picks_different_dims_within_the_budget(optembed_run):
    run, metrics = optembed_run
    search = summary(run, "1-search")
    dims = list(search["dims"].values())
    assert len(set(dims)) > 1 and all(1 <= d <= 8 for d in dims)
    assert search["candidates_scored"] >= 8
    assert metrics["embedding_bytes"] <= 0.5 * metrics["full_embedding_bytes"]


def test_optembed_retrained_model_is_stored_in_the_shared_pruned_format(optembed_run):
    run, metrics = optembed_run
    search = summary(run, "1-search")
    nnz = sum(search["kept_rows"][t] * search["dims"][t] for t in search["dims"])
    rows, dim = sum(search["rows"].values()), OPTEMBED["dim"]
    bitmap, csr = 4 * nnz + rows * ((dim + 7) // 8), 5 * nnz + 4 * (rows + 1)
    assert metrics["embedding_bytes"] == min(bitmap, csr)
    assert summary(run, "2-retrain")["format"] == ("bitmap" if bitmap <= csr else "csr")
    state = {k: v for k, v in torch.load(run / "stages" / "2-retrain" / "state.pt").items() if k.startswith("embedding.")}
    assert state["embedding.sparse.values"].numel() == nnz
    assert sum(t.numel() * t.element_size() for t in state.values()) == metrics["embedding_bytes"]
    assert set(metrics["stage_seconds"]) == {"supernet", "search", "retrain"}


@pytest.mark.slow
def test_eval_of_a_staged_run_reproduces_its_test_auc(optembed_run):
    run, metrics = optembed_run
    code, out, err = ctr("eval", run)
    assert code == 0, err
    assert abs(json.loads(out)["auc"] - metrics["test"]["auc"]) < 1e-6


def test_dnis_selection_weights_change_and_pruning_hits_the_target(dnis_run):
    run, metrics = dnis_run
    search = summary(run, "0-search")
    assert search["alpha_min"] < 0.99  # initialised to 1
    blocks = search["alpha_mean_per_block"]  # block 0: the most frequent ids
    assert len({round(a, 4) for a in blocks}) > 1
    assert blocks[0] > blocks[-1]  # the paper's finding: rare ids keep fewer dimensions
    # independently of the method's own counts: rows and the target from the bytes, kept
    # entries from the stored bitmap (numpy's unpackbits, little-endian as pack_bits)
    rows = metrics["full_embedding_bytes"] // (4 * 8)  # D = 8: 32 bytes a row
    target = math.floor((0.3 * metrics["full_embedding_bytes"] - rows) / 4)  # one mask byte a row
    bits = torch.load(run / "stages" / "1-prune" / "output.pt")["entry_bits"].numpy()
    assert bits.shape == (rows, 1)
    assert int(np.unpackbits(bits, bitorder="little").sum()) == target
    assert metrics["embedding_bytes"] == 4 * target + rows <= 0.3 * metrics["full_embedding_bytes"]


KILL_AFTER_SUPERNET = """
import os, signal
from ctr.train import stage_files

record_finished = stage_files.StageFiles.finish


def finish_then_die(self, record, stage, seconds):
    record_finished(self, record, stage, seconds)
    if stage.name == "supernet":
        os.kill(os.getpid(), signal.SIGKILL)


stage_files.StageFiles.finish = finish_then_die
"""


@pytest.mark.slow
def test_resume_after_a_kill_between_stages_continues_from_the_last_finished_stage(tmp_path):
    """A plugin kills the run (SIGKILL) right after it records the first stage as finished:
    deterministic, no polling. The resume searches from the restored supernet and ends as the
    run without the kill."""
    (tmp_path / "kill_after_supernet.py").write_text(KILL_AFTER_SUPERNET)
    raw = tiny_recipe(tmp_path, embedding={**OPTEMBED, "stages": {"supernet": {"epochs": 1}, "retrain": {"epochs": 1}}})
    whole = train(recipe_from_dict(raw), tmp_path / "whole")
    raw["plugins"] = ["kill_after_supernet"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    progress = run / "stages" / "progress.json"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    child = subprocess.run([sys.executable, "-m", "ctr.cli", "train", recipe, "--out", run], env=env,
                           capture_output=True, timeout=600)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    assert json.loads(progress.read_text())["finished"] == ["supernet"]
    assert not (run / "metrics.json").exists()
    supernet_state = run / "stages" / "0-supernet" / "state.pt"
    before = supernet_state.stat().st_mtime_ns

    result = subprocess.run([sys.executable, "-m", "ctr.cli", "train", "--resume", run], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "stage 1/3 supernet: finished earlier, restored" in result.stderr
    assert supernet_state.stat().st_mtime_ns == before
    assert json.loads(progress.read_text())["finished"] == ["supernet", "search", "retrain"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["embedding_bytes"] <= 0.5 * metrics["full_embedding_bytes"]
    same = ("valid", "test", "epochs", "steps", "embedding_bytes")
    assert {k: metrics[k] for k in same} == {k: whole[k] for k in same}


TERM_IN_SEARCH = """
import os, signal
from ctr.embeddings.optembed import OptEmbed


def search_then_term(self, stage, context):
    os.kill(os.getpid(), signal.SIGTERM)


OptEmbed.run_procedure = search_then_term
"""


def test_sigterm_during_a_procedure_stage_says_so_and_how_to_resume(tmp_path):
    """A procedure stage (OptEmbed's search) runs outside Lightning's fit and its SIGTERM
    handling: the run ends with the shell's code, one line and no traceback, and what the
    finished stages wrote is kept for ``--resume``."""
    (tmp_path / "term_in_search.py").write_text(TERM_IN_SEARCH)
    raw = tiny_recipe(tmp_path, embedding={**OPTEMBED, "stages": {"supernet": {"epochs": 1}}})
    raw["plugins"] = ["term_in_search"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    child = subprocess.run([sys.executable, "-m", "ctr.cli", "train", recipe, "--out", run], capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=600)
    assert child.returncode == 143, child.stderr[-2000:]
    assert child.stderr.splitlines()[-1] == (f"ctr: terminated (SIGTERM); `ctr train --resume {run}` continues from "
                                             "its last checkpoint, if one was written")
    assert "Traceback" not in child.stderr
    assert json.loads((run / "stages" / "progress.json").read_text())["finished"] == ["supernet"]


def test_models_lists_the_embedding_methods():
    code, out, _ = ctr("models")
    assert code == 0
    methods = out.split("embedding methods:")[1].split("datasets:")[0]
    for name in ("full", "hash", "unified", "optembed", "dnis"):
        assert f"  {name} " in methods


def _spoiling_finetune(step):
    """``CTRTask.step`` that, in a ``finetune`` stage, scrambles the top MLP after each step:
    a stage whose epochs only make the model worse on validation."""

    def spoiled(task, batch, optimizer, *args):
        loss = step(task, batch, optimizer, *args)
        if task.stage is not None and task.stage.name == "finetune":
            with torch.no_grad():
                for param in task.net.model.top.parameters():
                    param.copy_(torch.randn_like(param) * 3)
        return loss
    return spoiled


def test_a_stage_that_goes_on_training_keeps_its_start_when_no_epoch_beats_it(tmp_path, monkeypatch):
    """DeepLight's finetune goes on from the pruned weights: when its epochs only lose on
    validation, the weights it started from stay its best, and the run reports them."""
    from ctr.train.task import CTRTask

    monkeypatch.setattr(CTRTask, "step", _spoiling_finetune(CTRTask.step))
    embedding = {"method": "deeplight", "dim": 8, "budget": 0.5, "stages": {"prune": {"epochs": 6}, "finetune": {"epochs": 2}}}
    metrics = train(recipe_from_dict(tiny_recipe(tmp_path, embedding=embedding)), tmp_path / "run")
    run = tmp_path / "run"
    pruned = torch.load(run / "stages" / "0-prune" / "state.pt")
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)["state_dict"]
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    top = [name for name in pruned if name.startswith("model.top.")]
    assert top and all(torch.equal(best[f"net.{name}"], pruned[name]) for name in top)
    assert not all(torch.equal(last[f"net.{name}"], pruned[name]) for name in top)
    assert metrics["valid"]["auc"] > 0.55


def test_a_stage_cut_short_before_any_validation_keeps_the_better_of_start_and_end(tmp_path, monkeypatch):
    """max_steps ends the finetune before its first validation: its trained weights are
    validated then, and lose to the start they spoiled (as in the distributed loop)."""
    from ctr.train.task import CTRTask

    monkeypatch.setattr(CTRTask, "step", _spoiling_finetune(CTRTask.step))
    embedding = {"method": "deeplight", "dim": 8, "budget": 0.5,
                 "stages": {"prune": {"epochs": 6}, "finetune": {"max_steps": 3}}}
    train(recipe_from_dict(tiny_recipe(tmp_path, embedding=embedding)), tmp_path / "run")
    run = tmp_path / "run"
    pruned = torch.load(run / "stages" / "0-prune" / "state.pt")
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)["state_dict"]
    top = [name for name in pruned if name.startswith("model.top.")]
    assert top and all(torch.equal(best[f"net.{name}"], pruned[name]) for name in top)


def test_scoring_a_stages_start_leaves_its_training_unchanged(tmp_path, monkeypatch):
    """Validating the start draws no randomness and moves no weight: the stage's trained
    weights are those of the same run without the start scored."""
    import ctr.train.stages as stages

    embedding = {"method": "deeplight", "dim": 8, "budget": 0.5}
    lasts = []
    for scored in (True, False):
        monkeypatch.setattr(stages, "continues_training", lambda steps, index, scored=scored: scored and index > 0)
        train(recipe_from_dict(tiny_recipe(tmp_path / str(scored), embedding=embedding)), tmp_path / str(scored) / "run")
        lasts.append(torch.load(tmp_path / str(scored) / "run" / "checkpoints" / "last.ckpt", weights_only=False))
    assert lasts[0]["state_dict"].keys() == lasts[1]["state_dict"].keys()
    assert all(torch.equal(value, lasts[1]["state_dict"][name]) for name, value in lasts[0]["state_dict"].items())


def test_a_training_metric_monitored_leaves_the_start_unscored(tmp_path):
    """Early stopping on ``train/loss``: the start has no training loss to stand on, so a
    continuing stage trains as before instead of failing."""
    embedding = {"method": "deeplight", "dim": 8, "budget": 0.5}
    train_block = {"epochs": 2, "early_stop": {"monitor": "train/loss", "mode": "min", "patience": 2}}
    metrics = train(recipe_from_dict(tiny_recipe(tmp_path, embedding=embedding, train=train_block)), tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").exists() and metrics["test"]["auc"] > 0.5


@pytest.mark.parametrize("method, continuing", [
    ("deeplight", ["finetune"]), ("dnis", ["retrain"]), ("autosrh", ["retrain"]), ("dedup", ["finetune"]),
    ("pep", []), ("optembed", []), ("autodim", []),
])
def test_only_stages_that_go_on_from_trained_tables_score_their_start(method, continuing):
    """PEP and OptEmbed rewind to the initial weights; AutoDim retrains new tables at the
    chosen dims: their starts are not candidates for the best weights."""
    from ctr.registry import EMBEDDINGS
    from ctr.train.stage_files import continues_training
    from tests.embeddings.schemas import schema

    entry = EMBEDDINGS.get(method)
    options = {"budget": 0.5} if method != "optembed" else {}
    steps = entry.target(schema({"item": 2000, "user": 1000, "tags": 100}), entry.config(dim=8, **options)).stages()
    assert [s.name for i, s in enumerate(steps) if continues_training(steps, i)] == continuing


@pytest.fixture(scope="module")
def optembed_trained(tmp_path_factory):
    """A finished OptEmbed run, as a kill in its final evaluation leaves it (no metrics.json)."""
    tmp = tmp_path_factory.mktemp("optembed")
    raw = tiny_recipe(tmp, embedding={**OPTEMBED, "stages": {"supernet": {"epochs": 1}}})
    (tmp / "r.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp / "r.yaml"), "--out", str(tmp / "run")]) == 0
    (tmp / "run" / "metrics.json").unlink()
    return tmp / "run"


@pytest.mark.parametrize("spoil, message", [
    (("progress.json", b"{\"finished\": [\"sup"), "progress.json: not readable ("),
    (("progress.json", b"[]"), "progress.json: not a record of finished stages"),
    (("0-supernet/state.pt", None), "0-supernet/state.pt: not a readable stage file ("),
    (("initial.pt", b""), "initial.pt: not a readable stage file ("),
])
def test_a_broken_stage_file_is_one_line_on_resume(optembed_trained, tmp_path, spoil, message):
    """A cut-short or foreign file under stages/ (a disk that filled, a hand edit): the
    resume names it on one line instead of a JSON or unpickler traceback."""
    run = tmp_path / "run"
    shutil.copytree(optembed_trained, run)
    name, content = spoil
    path = run / "stages" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2] if content is None else content)
    code, _, err = ctr("train", "--resume", run)
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith(f"ctr: error: {path.parent}"), err[-500:]
    assert message in err


def test_a_stages_random_state_is_restored_only_on_its_world_size(tmp_path):
    """Each rank's generators are its own: a resume on another world size leaves them as
    seeding made them rather than give rank 0 its old state and others none."""
    from ctr.train.generators import restore_random, save_random

    torch.manual_seed(3)
    save_random(tmp_path, rank=0, world_size=2)
    after_stage = torch.rand(3)
    torch.manual_seed(4)
    restore_random(tmp_path, rank=0, world_size=1)
    assert not torch.equal(torch.rand(3), after_stage)
    restore_random(tmp_path, rank=0, world_size=2)
    assert torch.equal(torch.rand(3), after_stage)


@pytest.mark.parametrize("method, stage, train_stages", [
    ("dedup", "dedup", "warmup, finetune"), ("pep", "mask", "search, retrain"), ("autosrh", "prune", "search, retrain"),
])
def test_settings_of_a_procedure_stage_are_refused_before_training(method, stage, train_stages, tmp_path):
    """``stages.<procedure>.epochs`` was accepted and ignored: a procedure takes no gradient steps."""
    from ctr.errors import RecipeError

    embedding = {"method": method, "dim": 8, "budget": 0.6, "stages": {stage: {"epochs": 2}}}
    with pytest.raises(RecipeError) as err:
        train(recipe_from_dict(tiny_recipe(tmp_path, embedding=embedding)), tmp_path / "run")
    assert str(err.value) == (f"embedding.stages.{stage}: {method}'s {stage} stage is a procedure without gradient "
                              f"steps, so it takes no epochs or max_steps (its training stages: {train_stages})")
    assert not (tmp_path / "run" / "stages").exists()


class StoppedAfter(Exception):
    """Ends a run right after it records a stage finished (as a kill there would)."""


@pytest.mark.slow
def test_a_run_begun_before_the_search_limits_is_resumed_once_its_search_is_finished(tmp_path, monkeypatch):
    """A run begun by a ctr without optembed's limits (generations: 2000) and stopped after its
    supernet is refused on resume, naming its recipe.yaml (the search the limit bounds would
    run); stopped after its search, it resumes and finishes (nothing left reads the key)."""
    from ctr.embeddings import optembed
    from ctr.train.rundir import RunDir
    from ctr.train.stage_files import StageFiles

    finish = StageFiles.finish

    def stop_after(name):
        def finish_then_stop(self, record, stage, seconds):
            finish(self, record, stage, seconds)
            if stage.name == name:
                raise StoppedAfter(name)
        return finish_then_stop

    embedding = {**OPTEMBED, "generations": 2000, "mutations": 0, "crossovers": 0,
                 "stages": {"supernet": {"max_steps": 2}, "retrain": {"max_steps": 2}}}
    run = tmp_path / "run"
    with monkeypatch.context() as before:  # a ctr from before the limits
        before.setattr(optembed, "require_search_work", lambda config: None)
        before.setattr(StageFiles, "finish", stop_after("supernet"))
        with pytest.raises(StoppedAfter):
            train(recipe_from_dict(tiny_recipe(tmp_path, embedding=embedding)), run)
    code, _, err = ctr("train", "--resume", run)
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"ctr: error: {run / 'recipe.yaml'}: embedding.generations: 2000 generations are past optembed's limit of "
        "1,000 (the defaults run 10); lower it")
    with monkeypatch.context() as before:
        before.setattr(optembed, "require_search_work", lambda config: None)
        before.setattr(StageFiles, "finish", stop_after("search"))
        with pytest.raises(StoppedAfter):
            train(RunDir(run).load_recipe(), run, resume=True)
    code, _, err = ctr("train", "--resume", run)
    assert code == 0, err
    assert json.loads((run / "stages" / "progress.json").read_text())["finished"] == ["supernet", "search", "retrain"]
