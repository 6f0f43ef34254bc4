"""A finished run's ``recipe.yaml`` edited in its model or embedding settings since the run
began is refused by ``ctr eval``, ``ctr predict`` and ``ctr export`` in one line naming the
edit, before any data or checkpoint is read: the checkpoint holds the weights of the net the
run began with, and an edit that keeps their shapes (a DeepFM's activation, say) scored and
exported another net without a word. ``ctr eval`` of a split refuses an edit of the
split's keys too. Settings of how rows are read and scored stay editable."""

import pytest
import yaml

from ctr import cli
from ctr.errors import UserError
from tests.conftest import tiny_recipe

COMMANDS = [["eval", "{run}"], ["predict", "{run}", "{tmp}/rows.csv", "--out", "{tmp}/s.csv"],
            ["export", "{run}", "--out", "{tmp}/model.pt2"]]


def edited_run(tmp_path, section: str, key: str, value) -> tuple:
    """A run folder (no checkpoint) whose recipe.yaml sets ``section.key`` to ``value`` after
    beginning with a DeepFM of relu activations; returns the folder and the edited file."""
    run = tmp_path / "run"
    (run / "schema").mkdir(parents=True)
    raw = {**tiny_recipe(tmp_path), "model": {"name": "deepfm", "hidden": [8], "activation": "relu"}}
    (run / "schema" / "recipe.yaml").write_text(yaml.safe_dump(raw))
    raw[section][key] = value
    (run / "recipe.yaml").write_text(yaml.safe_dump(raw))
    return run, run / "recipe.yaml"


@pytest.mark.parametrize("command", COMMANDS, ids=["eval", "predict", "export"])
def test_a_run_whose_model_was_edited_since_it_began_is_refused_naming_the_edit(tmp_path, capsys, command):
    run, recipe = edited_run(tmp_path, "model", "activation", "tanh")
    assert cli.main([arg.format(run=run, tmp=tmp_path) for arg in command]) == 2
    assert capsys.readouterr().err.strip() == (
        f"ctr: error: {recipe}: edited since the run began (model.activation: 'relu' before, 'tanh' now); its "
        "checkpoint holds the weights of the net the run began with: undo the edit")


@pytest.mark.parametrize(("section", "key", "value"), [("embedding", "backend", "torch"),
                                                       ("data", "on_bad_rows", "skip"),
                                                       ("trainer", "accelerator", "auto")])
def test_edits_of_how_a_run_is_read_and_scored_are_not_refused(tmp_path, capsys, section, key, value):
    """A kernel backend computes the same values; reading and placement are the scorer's."""
    run, _ = edited_run(tmp_path, section, key, value)
    assert cli.main(["eval", str(run)]) == 2
    assert capsys.readouterr().err.strip() == f"ctr: error: {run}: no checkpoint at {run / 'checkpoints/best.ckpt'}"


@pytest.mark.parametrize(("key", "value", "shown"), [("seed", 7, "2024 before, 7 now"),
                                                     ("valid", 0.2, "0.1 before, 0.2 now")])
def test_a_split_edited_since_the_run_began_is_refused_by_eval_of_a_split(tmp_path, capsys, key, value, shown):
    """The split's keys draw which rows each split holds: an edited seed (or valid fraction,
    the test rows following it) scored other rows, training rows among them, as the run's test
    split, the same count of them, without a word."""
    run, recipe = edited_run(tmp_path, "data", "split", {key: value})
    assert cli.main(["eval", str(run)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"ctr: error: {recipe}: edited since the run began (data.split.{key}: {shown}); the test split would hold "
        "other rows than the run's: undo the edit")


def test_a_split_edit_is_not_refused_where_no_split_is_read(tmp_path, capsys):
    """Every row of --data is scored, whatever the recipe's split."""
    run, _ = edited_run(tmp_path, "data", "split", {"seed": 7})
    (tmp_path / "rows.csv").write_text("label\n1\n")
    assert cli.main(["eval", str(run), "--data", str(tmp_path / "rows.csv")]) == 2
    assert capsys.readouterr().err.strip() == f"ctr: error: {run}: no checkpoint at {run / 'checkpoints/best.ckpt'}"


def test_a_finished_run_reads_each_of_its_recipes_once(tmp_path, monkeypatch):
    """The net's check, the split's and the recipe scored share one parse of ``recipe.yaml``
    and one of the copy the run began with (they read each file three and two times)."""
    from ctr.train import rundir
    from ctr.train.saved import finished_run

    run, _ = edited_run(tmp_path, "data", "on_bad_rows", "skip")
    read, parse = [], rundir.read_yaml
    monkeypatch.setattr(rundir, "read_yaml", lambda path: read.append(path) or parse(path))
    with pytest.raises(UserError, match="no checkpoint at"):
        finished_run(run, split="test")
    assert sorted(read) == [run / "recipe.yaml", run / "schema" / "recipe.yaml"]


def test_an_edit_of_the_test_fraction_is_refused_by_eval_of_the_test_split_only(tmp_path, capsys):
    """The valid rows are carved first (a row's draw below data.split.valid), the test rows
    after them: the test fraction moves no valid row, and ``--split valid`` was refused all
    the same; the test split's rows move with it."""
    run, recipe = edited_run(tmp_path, "data", "split", {"test": 0.2, "seed": 2024})  # the seed as it began
    assert cli.main(["eval", str(run), "--split", "valid"]) == 2
    assert capsys.readouterr().err.strip() == f"ctr: error: {run}: no checkpoint at {run / 'checkpoints/best.ckpt'}"
    assert cli.main(["eval", str(run)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"ctr: error: {recipe}: edited since the run began (data.split.test: 0.1 before, 0.2 now); the test split would "
        "hold other rows than the run's: undo the edit")
