"""A run killed after a checkpoint written before its epoch's end (the epoch's lr row is
logged at the end) resumes with the uninterrupted run's log and epoch count: killed right
after the checkpoint of an epoch's end, of the last epoch, of an epoch's last step validated
every n steps, or of the validation at which early stopping ended the run mid-epoch; or
later, once the epoch's lr row was written (it is not written twice); the same with
``train.max_steps`` ending the run mid-epoch (Lightning restores its loops otherwise then),
killed before or right after the checkpoint of its validation at that step.
The kill is an exception raised in-process (the CSV log is on disk as a SIGKILL would
leave it)."""

import csv
import json

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ctr.recipe import recipe_from_dict
from ctr.train.runner import train
from ctr.train.task import CTRTask
from tests.conftest import tiny_recipe

SECTIONS = {
    "epoch_end": {"epochs": 2, "early_stop": None},
    "every_5": {"epochs": 2, "eval_every_n_steps": 5, "early_stop": None},  # 10 batches an epoch
    "early_stop": {"epochs": 3, "eval_every_n_steps": 4,  # stops at step 8's validation
                   "early_stop": {"monitor": "valid/auc", "mode": "max", "patience": 1, "min_delta": 0.5}},
    "max_steps": {"epochs": 3, "max_steps": 25, "early_stop": None},  # ends 5 steps into the last epoch
}


class Killed(Exception):
    """Stands for a SIGKILL."""


def kill_after_checkpoint(monkeypatch, step):
    """Makes the writer of ``last.ckpt`` at training step ``step`` raise ``Killed`` once it wrote it."""
    save = ModelCheckpoint._save_checkpoint

    def save_then_die(self, trainer, filepath):
        save(self, trainer, filepath)
        if trainer.global_step == step and filepath.endswith("last.ckpt"):
            raise Killed

    monkeypatch.setattr(ModelCheckpoint, "_save_checkpoint", save_then_die)


def kill_after_step(monkeypatch, step):
    """Makes training step ``step`` (counted from 1) raise ``Killed`` once it stepped."""
    training_step = CTRTask.training_step

    def step_then_die(self, batch, batch_idx):
        loss = training_step(self, batch, batch_idx)
        if self.global_step == step:
            raise Killed
        return loss

    monkeypatch.setattr(CTRTask, "training_step", step_then_die)


def recipe(tmp, name):
    return recipe_from_dict(tiny_recipe(tmp, train=SECTIONS[name], trainer={"num_threads": 1}))


def log_rows(run):
    with (run / "logs" / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def whole_runs(tmp_path_factory):
    """The uninterrupted run of each of ``SECTIONS``, trained on first use."""
    tmp, runs = tmp_path_factory.mktemp("whole"), {}

    def run(name):
        if name not in runs:
            runs[name] = tmp / name
            train(recipe(tmp, name), runs[name])
        return runs[name]

    return run


@pytest.mark.parametrize("name, kill, step", [
    ("epoch_end", kill_after_checkpoint, 10), ("epoch_end", kill_after_checkpoint, 20),
    ("epoch_end", kill_after_step, 15), ("every_5", kill_after_checkpoint, 10), ("every_5", kill_after_step, 13),
    ("early_stop", kill_after_checkpoint, 8), ("max_steps", kill_after_checkpoint, 10),
    ("max_steps", kill_after_step, 22), ("max_steps", kill_after_checkpoint, 25),
], ids=["first_epoch_end", "last_epoch_end", "after_the_lr_row", "last_step_validated", "after_its_lr_row",
        "early_stopped_mid_epoch", "max_steps_epoch_end", "max_steps_in_the_cut_epoch", "max_steps_at_the_cut"])
def test_a_run_resumed_from_before_its_epochs_end_logs_the_epoch_once(tmp_path, monkeypatch, whole_runs,
                                                                       name, kill, step):
    whole = whole_runs(name)
    kill(monkeypatch, step)
    with pytest.raises(Killed):
        train(recipe(whole.parent, name), tmp_path / "run")
    monkeypatch.undo()
    train(recipe(whole.parent, name), tmp_path / "run", resume=True)
    assert log_rows(tmp_path / "run") == log_rows(whole)
    resumed, whole = (json.loads((run / "metrics.json").read_text()) for run in (tmp_path / "run", whole))
    assert (resumed["epochs"], resumed["steps"]) == (whole["epochs"], whole["steps"])


def test_max_steps_cutting_an_epoch_validates_at_the_cut(whole_runs):
    """max_steps 25 of 3 epochs of 10 batches: after the validations at the first two epochs'
    ends, the 5 steps of the cut epoch are validated at step 25 (Lightning validates at epoch
    ends only: they were in no validation, and the best checkpoint and test metrics ignored
    them); ``last.ckpt`` holds them and ``best.ckpt`` is the best of the three validations."""
    whole = whole_runs("max_steps")
    validated = {int(row["step"]) + 1: float(row["valid/auc"]) for row in log_rows(whole) if row.get("valid/auc")}
    assert list(validated) == [10, 20, 25]
    last, best = (torch.load(whole / "checkpoints" / name, weights_only=False) for name in ("last.ckpt", "best.ckpt"))
    assert last["global_step"] == 25
    assert best["global_step"] == max(validated, key=validated.get)
