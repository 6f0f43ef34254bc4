"""A training split whose row count leaves one row for the last batch: models with batch
statistics (DCN's BatchNorm, DIN's Dice) cannot train on one row, so that batch is dropped."""

from ctr.datasets import prepare
from ctr.recipe import recipe_from_dict
from ctr.train.runner import train
from tests.conftest import tiny_recipe


def test_a_one_row_last_training_batch_is_dropped(tmp_path):
    raw = tiny_recipe(tmp_path)
    rows = prepare(recipe_from_dict(raw).data, progress=False).report["splits"]["train"]["rows"]
    raw["train"] = {**raw["train"], "batch_size": rows - 1}
    raw["model"] = {"name": "dcn", "cross_layers": 1, "hidden": [16], "batch_norm": True}
    metrics = train(recipe_from_dict(raw), tmp_path / "run")
    assert metrics["steps"] == 1 and "auc" in metrics["test"]
