"""``train.embedding_optimizer.fused``: recipe validation, a CLI run, and its resume."""

import json

import pytest
import torch
import yaml

from ctr.errors import RecipeError
from ctr.recipe import recipe_from_dict
from tests.conftest import begun_with, run_ctr, tiny_recipe

FUSED = {"embedding_optimizer": {"name": "rowwise_adagrad", "lr": 0.05, "fused": True}}


@pytest.mark.parametrize(
    "train, trainer, message",
    [
        ({"embedding_optimizer": {"name": "sgd", "fused": True, "weight_decay": 0.1}}, {}, "weight_decay"),
    ],
)
def test_invalid_fused_recipes_name_the_key(tmp_path, train, trainer, message):
    raw = tiny_recipe(tmp_path, train=train, trainer=trainer)
    with pytest.raises(RecipeError, match="train.embedding_optimizer") as err:
        recipe_from_dict(raw)
    assert message in str(err.value)


def test_a_rule_the_kernels_lack_stops_training_before_any_work(tmp_path):
    recipe = tmp_path / "adam.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, train={"embedding_optimizer": {"name": "adam", "fused": True}})))
    result = run_ctr("train", recipe, "--out", tmp_path / "run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train.embedding_optimizer.fused: optimizer 'adam' has no fused form" in result.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_fused_run_trains_checkpoints_state_and_resumes(tmp_path):
    """A fused run saves the fused state and the fused lr in its checkpoint; stopped after its
    first epoch of two and resumed, it ends as the run trained in one go."""
    raw = tiny_recipe(tmp_path, train={**FUSED, "epochs": 2, "early_stop": None})
    recipe = tmp_path / "fused.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    whole = run_ctr("train", recipe, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    assert "test: auc" in whole.stdout
    run = tmp_path / "run"
    cut = run_ctr("train", recipe, "--out", run, "-o", "train.epochs=1")
    assert cut.returncode == 0, cut.stderr
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    state = checkpoint["state_dict"]
    assert state["net.embedding.fused_sum"].gt(0).any()  # row-wise Adagrad state was trained and saved
    assert set(checkpoint["optimizer_states"][0]) == {"dense", "embedding"}  # "embedding": the fused update's lr only
    assert checkpoint["optimizer_states"][0]["embedding"]["state"] == {}
    (run / "metrics.json").unlink()  # a finished run is not resumed: as if killed after its first epoch
    begun_with(run, recipe_from_dict(raw).to_dict())  # as if begun for two epochs
    resumed = run_ctr("train", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr
    whole_end, resumed_end = (json.loads((folder / "metrics.json").read_text()) for folder in (tmp_path / "whole", run))
    same = ("valid", "test", "epochs", "steps")
    assert {k: resumed_end[k] for k in same} == {k: whole_end[k] for k in same}
