"""The run directory's default name; recipe paths naming a home folder."""

import pytest

from ctr.errors import RecipeError
from ctr.recipe import recipe_from_dict
from ctr.train.rundir import default_run_dir


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
