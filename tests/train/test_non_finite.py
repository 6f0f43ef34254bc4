"""A non-finite loss stops training, naming the step, and keeps the last good checkpoint."""

import math

import pytest
import torch

from ctr.errors import TrainingDiverged
from ctr.recipe import recipe_from_dict
from ctr.train.runner import train
from ctr.train.task import CTRTask
from tests.conftest import tiny_recipe

BAD_FROM = 15  # steps taken (global_step after a step) from which the loss is nan: step 15 is the first


def test_nan_loss_stops_training_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    step = CTRTask.step

    def nan_after(self, batch, optimizer, backward=torch.Tensor.backward):
        loss = step(self, batch, optimizer, backward)
        return loss * math.nan if self.global_step >= BAD_FROM else loss

    monkeypatch.setattr(CTRTask, "step", nan_after)
    recipe = recipe_from_dict(tiny_recipe(tmp_path, train={"epochs": 3}))
    with pytest.raises(TrainingDiverged, match="the loss is not finite at step 15; stopped at step 15"):
        train(recipe, tmp_path / "run")
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 10  # the end of epoch 1, validated and saved
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point())
    assert not (tmp_path / "run" / "metrics.json").exists()
