"""Batches too small for batch statistics. A training split whose row count leaves one row
for the last batch drops that batch; a batch size of one row is refused for a model with
BatchNorm; DIN's Dice takes one row (a batch holding a single behaviour in all)."""

import pytest
import yaml

from ctr.cli import main
from ctr.datasets import prepare
from ctr.recipe import recipe_from_dict
from ctr.train.runner import train
from tests.conftest import tiny_recipe

DCN = {"name": "dcn", "cross_layers": 1, "hidden": [16], "batch_norm": True}


def test_a_one_row_last_training_batch_is_dropped(tmp_path):
    raw = tiny_recipe(tmp_path)
    rows = prepare(recipe_from_dict(raw).data, progress=False).report["splits"]["train"]["rows"]
    raw["train"] = {**raw["train"], "batch_size": rows - 1}
    raw["model"] = DCN
    metrics = train(recipe_from_dict(raw), tmp_path / "run")
    assert metrics["steps"] == 1 and "auc" in metrics["test"]


def test_a_training_split_that_makes_no_batch_is_one_line(tmp_path, capsys):
    """One training row is a batch of one, dropped: the run would train no step and finish."""
    for name, rows in (("train", 1), ("valid", 6), ("test", 6)):
        lines = "".join(f"{i % 2},u{i},a{i % 3}\n" for i in range(rows))
        (tmp_path / f"{name}.csv").write_text("label,user,ad\n" + lines)
    raw = tiny_recipe(tmp_path)
    raw["data"] = {"dataset": "csv", "path": str(tmp_path / "train.csv"), "valid_path": str(tmp_path / "valid.csv"),
                   "test_path": str(tmp_path / "test.csv"), "cache_dir": str(tmp_path / "cache"),
                   "features": [{"name": "user"}, {"name": "ad"}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("ctr: error: data: the train split's 1 row makes no training batch (a last batch of fewer than 2 "
                   "rows a process is dropped)")
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("embedding, split, use", [
    ({"method": "full", "dim": 8}, "train", "training"),
    ({"method": "autodim", "dim": 8, "budget": 0.9}, "valid", "autodim's search, which trains on validation batches,"),
])
def test_a_batch_above_a_splits_rows_under_compile_is_one_line_naming_batch_size(tmp_path, capsys, embedding, split,
                                                                                 use):
    """trainer.compile drops an epoch's smaller last batch: a batch_size above the training rows
    was blamed on a last batch of fewer than 2 rows, and one above the validation rows of a
    bilevel search ended in a ZeroDivisionError."""
    raw = tiny_recipe(tmp_path, embedding=embedding, trainer={"compile": True})
    rows = prepare(recipe_from_dict(raw).data, progress=False).report["splits"][split]["rows"]
    raw["train"] = {**raw["train"], "batch_size": rows + 1}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"ctr: error: train.batch_size: {rows + 1} is more than the {split} split's {rows} rows, and "
                   f"trainer.compile drops an epoch's smaller last batch: {use} gets no batch; use a smaller "
                   "batch_size or trainer.compile: false")


def test_one_row_batches_with_batch_norm_are_one_line(tmp_path, capsys):
    raw = tiny_recipe(tmp_path, train={"batch_size": 1, "max_steps": 2})
    raw["model"] = DCN
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("ctr: error: train.batch_size: 1; the model's BatchNorm needs at least 2 rows a batch in each "
                   "process (a larger batch, or model.batch_norm: false where the model has it)")


@pytest.mark.parametrize("batch_size, variant", [(1, "paper"), (4, "paper"), (1, "authors")])
def test_din_trains_when_a_batch_holds_one_behaviour(tmp_path, batch_size, variant):
    """Only the first of every four rows has a (one-item) history: a batch of 4 gives Dice in
    the attention unit one row, and a batch of 1 gives every Dice one row. The ``authors``
    form's input normalisation (``input_norm: inference``) holds no BatchNorm: a batch of 1
    trains (docs/errors.md listed it among the models refused)."""
    rows = "".join(f"{i % 2},i{i % 7},{'i3' if i % 4 == 0 else ''}\n" for i in range(64))
    (tmp_path / "rows.csv").write_text("label,item,history\n" + rows)
    raw = tiny_recipe(tmp_path, train={"batch_size": batch_size, "max_steps": 12, "early_stop": None})
    raw["model"] = {"name": "din", "variant": variant}
    raw["data"] = {"dataset": "csv", "path": str(tmp_path / "rows.csv"), "cache_dir": raw["data"]["cache_dir"],
                   "features": [{"name": "item"}, {"name": "history", "kind": "sequence", "share_with": "item",
                                                  "pooling": "none", "max_len": 3}]}
    metrics = train(recipe_from_dict(raw), tmp_path / "run")
    assert metrics["steps"] == 12
