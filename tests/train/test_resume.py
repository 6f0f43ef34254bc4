"""Exact resume: a run killed (SIGKILL) inside its second epoch and resumed ends with the
same metrics.json and metrics.csv as the uninterrupted run (also from a checkpoint written
mid-epoch); a moved run dir resumes; a finished run is not resumed."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import yaml

from ctr.cli import main
from ctr.train.loop import load_checkpoint
from tests.conftest import run_ctr, tiny_recipe

pytestmark = pytest.mark.slow  # three 3-epoch runs

KILL_AT_STEP = """
import os, signal
from ctr.train.task import CTRTask

KILL_AT = int(os.environ["CTR_TEST_KILL_AT"])
training_step = CTRTask.training_step


def step_then_die(self, batch, batch_idx):
    loss = training_step(self, batch, batch_idx)
    if self.global_step == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    return loss


CTRTask.training_step = step_then_die
"""
SAME = ("valid", "test", "epochs", "steps", "best_checkpoint", "embedding_bytes")


def ctr(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ctr.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def log_rows(run):
    with (run / "logs" / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def three_epochs_recipe(tmp):
    """The raw recipe of the 3-epoch runs (data cached in ``tmp``)."""
    return tiny_recipe(tmp, train={"epochs": 3, "early_stop": {"monitor": "valid/auc", "mode": "max", "patience": 5}})


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """The uninterrupted 3-epoch run (read only)."""
    tmp = tmp_path_factory.mktemp("whole")
    (tmp / "r.yaml").write_text(yaml.safe_dump(three_epochs_recipe(tmp)))
    whole = run_ctr("train", tmp / "r.yaml", "--out", tmp / "whole")  # in this process: the killed one is apart
    assert whole.returncode == 0, whole.stderr
    return tmp / "whole"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, whole_run):
    """The uninterrupted run and one killed at step 15 (of 3 × 10), then moved, then resumed."""
    tmp = tmp_path_factory.mktemp("resume")
    (tmp / "kill_at_step.py").write_text(KILL_AT_STEP)
    raw = three_epochs_recipe(tmp)
    raw["plugins"] = ["kill_at_step"]
    (tmp / "k.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(tmp), "CTR_TEST_KILL_AT": "15"}
    killed = ctr("train", tmp / "k.yaml", "--out", tmp / "killed", env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp / "killed" / "metrics.json").exists()
    shutil.move(tmp / "killed", tmp / "moved")
    env["CTR_TEST_KILL_AT"] = "-1"
    resumed = ctr("train", "--resume", tmp / "moved", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (tmp / "resumed.log").write_text(resumed.stderr)
    return whole_run, tmp / "moved"


def test_a_killed_moved_and_resumed_run_ends_with_the_same_metrics(runs):
    whole, resumed = (json.loads((run / "metrics.json").read_text()) for run in runs)
    assert {k: whole[k] for k in SAME} == {k: resumed[k] for k in SAME}
    assert resumed["train_seconds"] > 0


def test_a_resume_says_which_checkpoint_it_goes_on_from(runs):
    said = (runs[1].parent / "resumed.log").read_text()
    assert f"resuming from {runs[1] / 'checkpoints' / 'last.ckpt'}, written at step 10" in said


def test_the_log_is_appended_not_replaced(runs):
    whole, resumed = (log_rows(run) for run in runs)
    assert resumed == whole
    assert {row["epoch"] for row in resumed} == {"0", "1", "2"}


def test_resume_of_a_finished_run_says_so_and_changes_nothing(whole_run, capsys):
    whole = whole_run
    before = {p: p.stat().st_mtime_ns for p in whole.rglob("*") if p.is_file()}
    code = main(["train", "--resume", str(whole)])  # in this process: the message and exit code of python -m ctr
    assert code == 2 and "this run is finished" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in whole.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("every, kill_at, checkpoint", [(4, 15, 14), (5, 12, 10), (1, 4, 3)])
def test_a_run_validated_every_n_steps_resumes_at_its_checkpoints_batch(tmp_path, every, kill_at, checkpoint):
    """Validated every 4 steps (10 an epoch) and killed at step 15: the last checkpoint is
    from step 14, 4 batches into epoch 1; the resumed run continues at that epoch's 5th batch
    with the optimizers, random generators, early stopping and the lr the epoch began with
    (logged again; a warm-up schedule changes it every step). Validated every 5 steps and
    killed at 12: the checkpoint is the last step of epoch 0, whose lr is not logged twice."""
    (tmp_path / "kill_at_step.py").write_text(KILL_AT_STEP)
    raw = tiny_recipe(tmp_path, train={
        "epochs": 3, "eval_every_n_steps": every, "scheduler": {"name": "linear_warmup", "warmup_steps": 25},
        "early_stop": {"monitor": "valid/auc", "mode": "max", "patience": 5},
    })
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    whole = run_ctr("train", tmp_path / "r.yaml", "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    raw["plugins"] = ["kill_at_step"]
    (tmp_path / "k.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "CTR_TEST_KILL_AT": str(kill_at)}
    killed = ctr("train", tmp_path / "k.yaml", "--out", tmp_path / "killed", env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.ckpt")["global_step"] == checkpoint
    env["CTR_TEST_KILL_AT"] = "-1"
    resumed = ctr("train", "--resume", tmp_path / "killed", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "infer the `batch_size`" not in resumed.stderr  # the epoch's lrs, logged again, name theirs
    runs = (tmp_path / "whole", tmp_path / "killed")
    whole_metrics, resumed_metrics = (json.loads((run / "metrics.json").read_text()) for run in runs)
    assert {k: whole_metrics[k] for k in SAME} == {k: resumed_metrics[k] for k in SAME}
    assert log_rows(runs[1]) == log_rows(runs[0])


def test_validated_every_step_the_best_checkpoint_is_the_best_validation(tmp_path):
    """``eval_every_n_steps: 1``: Lightning read the 1-step interval as 1.0 epoch and saved
    only at the epoch's end, so the best checkpoint was the last validation's."""
    raw = tiny_recipe(tmp_path, train={"eval_every_n_steps": 1, "early_stop": None, "epochs": 1})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    assert ctr("train", tmp_path / "r.yaml", "--out", tmp_path / "run").returncode == 0
    with (tmp_path / "run" / "logs" / "metrics.csv").open() as handle:
        aucs = [float(row["valid/auc"]) for row in csv.DictReader(handle) if row.get("valid/auc")]
    chosen = json.loads((tmp_path / "run" / "metrics.json").read_text())["valid"]["auc"]
    assert len(aucs) > 2 and max(aucs) != aucs[-1]  # else the test could not tell
    assert chosen == pytest.approx(max(aucs), abs=1e-6)


KILL_IN_STAGE = """
import os, signal
from ctr.train.task import CTRTask

training_step = CTRTask.training_step


def step_then_die(self, batch, batch_idx):
    loss = training_step(self, batch, batch_idx)
    if self.stage is not None and self.stage.name == os.environ["CTR_TEST_KILL_STAGE"] and self.global_step == 15:
        os.kill(os.getpid(), signal.SIGKILL)
    return loss


CTRTask.training_step = step_then_die
"""


@pytest.mark.parametrize("method, stage, restored", [
    ("optembed", "retrain", "stage 2/3 search: finished earlier, restored"),
    ("dnis", "search", "stage 1/3 search: started"),
    ("autosrh", "search", "stage 1/3 search: started"),
    ("autodim", "search", "stage 1/2 search: started"),
])
def test_a_multi_stage_run_killed_inside_a_training_stage_resumes_exactly(tmp_path, method, stage, restored):
    """Killed at step 15 of a 3-epoch training stage: OptEmbed's retrain (after supernet and
    search finished), the bi-level searches of DNIS, AutoSrh and AutoDim (their architecture
    steps' validation batches continue where they were)."""
    from tests.train.test_stages import DNIS, OPTEMBED

    (tmp_path / "kill_in_stage.py").write_text(KILL_IN_STAGE)
    embedding = {"optembed": OPTEMBED, "dnis": DNIS, "autosrh": {"method": "autosrh", "dim": 8, "budget": 0.3},
                 "autodim": {"method": "autodim", "dim": 8, "budget": 0.5}}[method]
    raw = tiny_recipe(tmp_path, embedding={**embedding, "stages": {stage: {"epochs": 3}}},
                      train={"early_stop": {"monitor": "valid/auc", "mode": "max", "patience": 5}})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    whole = run_ctr("train", tmp_path / "r.yaml", "--out", tmp_path / "whole")  # in this process: the killed one is apart
    assert whole.returncode == 0, whole.stderr[-2000:]
    raw["plugins"] = ["kill_in_stage"]
    (tmp_path / "k.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "CTR_TEST_KILL_STAGE": stage}
    killed = ctr("train", tmp_path / "k.yaml", "--out", tmp_path / "killed", env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    env["CTR_TEST_KILL_STAGE"] = "none"
    resumed = ctr("train", "--resume", tmp_path / "killed", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert restored in resumed.stderr
    runs = (tmp_path / "whole", tmp_path / "killed")
    whole_metrics, resumed_metrics = (json.loads((run / "metrics.json").read_text()) for run in runs)
    assert {k: whole_metrics[k] for k in SAME} == {k: resumed_metrics[k] for k in SAME}
    assert log_rows(runs[1]) == log_rows(runs[0])


def same_run(whole, resumed):
    whole_metrics, resumed_metrics = (json.loads((run / "metrics.json").read_text()) for run in (whole, resumed))
    assert {k: whole_metrics[k] for k in SAME} == {k: resumed_metrics[k] for k in SAME}
    assert log_rows(resumed) == log_rows(whole)


def cut_after_training(whole, cut):
    """``whole`` as a kill during its final evaluation leaves it: trained, no metrics.json."""
    shutil.copytree(whole, cut)
    (cut / "metrics.json").unlink()


def test_a_run_killed_after_early_stopping_ended_it_resumes_to_the_same_end(tmp_path):
    """Early stopping fired, then the run was killed before metrics.json: the resume
    evaluates, it does not train on (Lightning's checkpoint keeps why it stopped, not that
    the trainer should stop)."""
    stop = {"monitor": "valid/auc", "mode": "max", "patience": 1, "min_delta": 0.5}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp_path, train={"epochs": 10, "early_stop": stop})))
    assert ctr("train", tmp_path / "r.yaml", "--out", tmp_path / "whole").returncode == 0
    cut_after_training(tmp_path / "whole", tmp_path / "cut")
    resumed = ctr("train", "--resume", tmp_path / "cut")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    same_run(tmp_path / "whole", tmp_path / "cut")
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["epochs"] == 2


def test_a_multi_stage_run_killed_after_its_last_stage_reports_its_training(tmp_path):
    """Every stage finished before the kill: metrics.json still gives the last stage's
    epochs, steps and samples/s (they were 0)."""
    from tests.train.test_stages import OPTEMBED

    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp_path, embedding=OPTEMBED)))
    assert ctr("train", tmp_path / "r.yaml", "--out", tmp_path / "whole").returncode == 0
    cut_after_training(tmp_path / "whole", tmp_path / "cut")
    resumed = ctr("train", "--resume", tmp_path / "cut")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    same_run(tmp_path / "whole", tmp_path / "cut")
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert cut["steps"] > 0 and cut["train_samples_per_s"] == whole["train_samples_per_s"]


@pytest.mark.parametrize("model", [{}, {"name": "deepfm", "hidden": [16], "dropout": 0.3}], ids=["dlrm", "dropout"])
def test_a_multi_stage_run_killed_as_a_stage_began_draws_as_the_whole_run(tmp_path, model):
    """Killed as AutoDim's retrain began (the search finished): the retrain's fresh tables,
    and with dropout its masks, come from the random state the search left, as without the
    kill (a resume drew them from the state after seeding)."""
    embedding = {"method": "autodim", "dim": 8, "budget": 0.5, "stages": {"search": {"epochs": 2}}}
    raw = tiny_recipe(tmp_path, embedding=embedding, train={"epochs": 2})
    if model:
        raw["model"] = model
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    assert ctr("train", tmp_path / "r.yaml", "--out", tmp_path / "whole").returncode == 0
    cut = tmp_path / "cut"
    cut_after_training(tmp_path / "whole", cut)
    for left in ("checkpoints", "logs", "curves.png"):  # what the retrain (the last stage) writes
        shutil.rmtree(cut / left) if (cut / left).is_dir() else (cut / left).unlink()
    progress = json.loads((cut / "stages" / "progress.json").read_text())
    progress["finished"] = ["search"]
    progress["seconds"].pop("retrain")
    progress.pop("fit")
    (cut / "stages" / "progress.json").write_text(json.dumps(progress))
    resumed = ctr("train", "--resume", cut)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stage 1/2 search: finished earlier, restored" in resumed.stderr
    same_run(tmp_path / "whole", cut)


KILL_IN_CHECKPOINT_COPY = """
import errno, os, shutil, signal, tempfile

rename, copyfile, copies = os.rename, shutil.copyfile, []


def rename_within_one_file_system(src, dst, *args, **kwargs):
    if str(src).startswith(tempfile.gettempdir()) != str(dst).startswith(tempfile.gettempdir()):
        raise OSError(errno.EXDEV, "Invalid cross-device link", str(src), None, str(dst))
    return rename(src, dst, *args, **kwargs)


def copy_then_die_in_the_second_last_ckpt(src, dst, *args, **kwargs):
    if str(dst).endswith("last.ckpt"):
        copies.append(dst)
        if len(copies) == 2:
            with open(src, "rb") as whole, open(dst, "wb") as cut:
                cut.write(whole.read(1000))
            os.kill(os.getpid(), signal.SIGKILL)
    return copyfile(src, dst, *args, **kwargs)


os.rename, shutil.copyfile = rename_within_one_file_system, copy_then_die_in_the_second_last_ckpt
"""


def test_a_run_on_another_file_system_than_tmpdir_killed_while_checkpointing_resumes(tmp_path, whole_run):
    """$TMPDIR on another file system than the run (here os.rename refuses between them, as
    it does with EXDEV): Lightning wrote a checkpoint into $TMPDIR and moved it, a copy, so a
    kill inside the copy of the second ``last.ckpt`` left 1000 bytes of it, and the resume
    failed on them (and the temporary stayed in $TMPDIR)."""
    (tmp_path / "kill_in_checkpoint_copy.py").write_text(KILL_IN_CHECKPOINT_COPY)
    raw = three_epochs_recipe(tmp_path)
    raw["plugins"] = ["kill_in_checkpoint_copy"]
    (tmp_path / "k.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "systmp").mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "TMPDIR": str(tmp_path / "systmp")}
    killed = ctr("train", tmp_path / "k.yaml", "--out", tmp_path / "killed", env=env)
    if killed.returncode == -signal.SIGKILL:
        resumed = ctr("train", "--resume", tmp_path / "killed", env=env)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    else:
        assert killed.returncode == 0, killed.stderr[-3000:]
    same_run(whole_run, tmp_path / "killed")
    assert list((tmp_path / "systmp").iterdir()) == []


TERM_BEFORE = """
import os, signal
from ctr.train import runner

from ctr.train.task import CTRTask

CALLED = os.environ["CTR_TEST_TERM_BEFORE"]


def wrapped(work):
    def term_then_work(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return work(*args, **kwargs)
    return term_then_work


if CALLED == "on_train_end":
    CTRTask.on_train_end = wrapped(CTRTask.on_train_end)
elif CALLED != "none":
    setattr(runner, CALLED, wrapped(getattr(runner, CALLED)))
"""


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """The uninterrupted 2-epoch run the SIGTERM tests end as (read only)."""
    tmp = tmp_path_factory.mktemp("two_epochs")
    (tmp / "r.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp, train={"epochs": 2})))
    whole = ctr("train", tmp / "r.yaml", "--out", tmp / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    return tmp / "whole"


@pytest.mark.parametrize("called", ["prepare", "on_train_end", "evaluate_checkpoint"])
def test_sigterm_outside_the_fit_ends_the_run_saying_how_to_resume(tmp_path, two_epochs, called):
    """SIGTERM as the data is prepared, as the fit ends (after its last validation, where
    Lightning checks for it no more: the run went on to its end), or as the trained run's
    best checkpoint is evaluated (a fit's and a procedure's SIGTERM were handled, these ended
    the process without a word, killed by the signal); the resume (or, stopped before the run
    directory was made, the same command) ends as the uninterrupted run."""
    (tmp_path / "term_before.py").write_text(TERM_BEFORE)
    raw = tiny_recipe(tmp_path, train={"epochs": 2}, plugins=["term_before"])
    (tmp_path / "k.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "CTR_TEST_TERM_BEFORE": called}
    stopped = ctr("train", tmp_path / "k.yaml", "--out", tmp_path / "stopped", env=env)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    hint = f"; `ctr train --resume {tmp_path / 'stopped'}` continues from its last checkpoint, if one was written"
    said = "ctr: terminated (SIGTERM)" + ("" if called == "prepare" else hint)  # before the run directory is made
    assert stopped.stderr.splitlines()[-1] == said
    assert not (tmp_path / "stopped" / "metrics.json").exists()
    env["CTR_TEST_TERM_BEFORE"] = "none"
    again = ("train", "--resume", tmp_path / "stopped") if called != "prepare" else (
        "train", tmp_path / "k.yaml", "--out", tmp_path / "stopped")
    resumed = ctr(*again, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    same_run(two_epochs, tmp_path / "stopped")
