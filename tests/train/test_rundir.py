"""The run directory's default name; recipe paths naming a home folder."""

import pytest

from ctr.errors import RecipeError
from ctr.recipe import recipe_from_dict
from ctr.train.rundir import RunDir, default_run_dir


def test_output_dir_expands_the_home_folder(tmp_path, monkeypatch):
    """``output.dir: ~/runs/a`` made a folder named ``~`` in the current one (data paths expand it)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_run_dir(recipe_from_dict({"output": {"dir": "~/runs/a"}})) == tmp_path / "runs" / "a"


@pytest.mark.parametrize("key", ["output.dir", "data.cache_dir", "data.path"])
def test_a_recipe_path_naming_no_user_s_home_is_refused_naming_the_key(key):
    """``output.dir: ~nosuchuser/a`` ended in a RuntimeError traceback where the path was read."""
    section, name = key.split(".")
    raw = {section: {name: "~no-such-user-of-ctr/a"}}
    if key == "data.path":
        raw["data"].update(dataset="csv", features=[{"name": "a"}])
    with pytest.raises(RecipeError, match=rf"^{key}: '~no-such-user-of-ctr/a' names the home folder of no user"):
        recipe_from_dict(raw)


@pytest.mark.parametrize("written, started", [
    ([], False),
    (["stages/initial.pt"], False),
    (["stages/initial.pt", "stages/0-search/output.pt"], False),
    (["stages/progress.json"], True),
    (["stages/0-search/checkpoints/last.ckpt"], True),
    (["stages/0-search/checkpoints/last/ctr.json"], True),
    (["stages/0-search/checkpoints/.last.old/ctr.json"], True),
    (["checkpoints/last.ckpt"], True),
    (["checkpoints/last/ctr.json"], True),
], ids=["nothing", "initial-net", "unfinished-stage", "finished-stage", "stage-checkpoint",
        "distributed-stage-checkpoint", "distributed-stage-checkpoint-swapped", "checkpoint", "distributed-checkpoint"])
def test_a_multi_stage_run_has_started_at_its_first_finished_stage_or_checkpoint(tmp_path, written, started):
    """stages/ alone (the net before the first stage, written first) is no progress to resume:
    a run refused at its first batch kept it and could neither resume nor be trained anew."""
    for name in written:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert RunDir(tmp_path).started is started
