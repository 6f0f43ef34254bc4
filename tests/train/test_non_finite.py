"""A non-finite loss stops training, naming the step, and keeps the last good checkpoint:
read every step (the CPU's mode) and deferred (an accelerator's mode, forced here on the
CPU: the host reads the device's record every few steps and before each validation)."""

import math

import pytest
import torch

from ctr.errors import TrainingDiverged
from ctr.recipe import recipe_from_dict
from ctr.train import loop
from ctr.train.watch import loss_check_interval
from ctr.train.runner import train
from ctr.train.task import CTRTask
from tests.conftest import tiny_recipe


def nan_from(monkeypatch, bad_from: int) -> None:
    """The loss is nan from ``bad_from`` steps taken on (global_step after a step: step ``bad_from`` is the first)."""
    step = CTRTask.step

    def nan_after(self, batch, optimizer, backward=torch.Tensor.backward):
        loss = step(self, batch, optimizer, backward)
        return loss * math.nan if self.global_step >= bad_from else loss

    monkeypatch.setattr(CTRTask, "step", nan_after)


def test_the_check_interval_is_every_step_on_the_cpu_and_deferred_on_an_accelerator():
    assert loss_check_interval(torch.device("cpu"), 20) == 1
    assert loss_check_interval(torch.device("cuda", 0), 20) == 20


@pytest.mark.parametrize("every, extra, bad_from, stopped_at, last_good", [
    (1, {}, 15, 15, 10),  # the CPU's mode: read at the bad step
    (20, {}, 15, 20, 10),  # deferred: read before the validation at step 20, which writes no checkpoint
    (4, {"eval_every_n_steps": 7}, 13, 16, 7),  # deferred: read at step 16, a multiple of 4, before any validation
])
def test_nan_loss_stops_training_naming_the_step_and_keeps_the_last_good_checkpoint(
        tmp_path, monkeypatch, every, extra, bad_from, stopped_at, last_good):
    nan_from(monkeypatch, bad_from)
    monkeypatch.setattr(loop, "loss_check_interval", lambda device, deferred: every)
    recipe = recipe_from_dict(tiny_recipe(tmp_path, train={"epochs": 3, **extra}))
    message = f"the loss is not finite at step {bad_from}; stopped at step {stopped_at},"
    with pytest.raises(TrainingDiverged, match=message):
        train(recipe, tmp_path / "run")
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == last_good
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point())
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_loss_not_finite_at_the_first_step_points_at_the_initial_weights_not_the_lr(tmp_path):
    """embedding.init_std: 1e30 made the first loss inf, and the message said to lower the
    learning rate, which had not been used yet."""
    recipe = recipe_from_dict(tiny_recipe(tmp_path, embedding={"init_std": 1e30}))
    with pytest.raises(TrainingDiverged, match=r"at step 1; .*\(at step 1 the loss is of the weights before any update: "
                                               r"not the learning rate, but the initial weights \(embedding\.init_std\)"):
        train(recipe, tmp_path / "run")
