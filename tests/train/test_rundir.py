"""The run directory's default name."""

from ctr.recipe import recipe_from_dict
from ctr.train.rundir import default_run_dir


def test_output_dir_expands_the_home_folder(tmp_path, monkeypatch):
    """``output.dir: ~/runs/a`` made a folder named ``~`` in the current one (data paths expand it)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_run_dir(recipe_from_dict({"output": {"dir": "~/runs/a"}})) == tmp_path / "runs" / "a"
