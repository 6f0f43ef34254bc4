"""The per-model recipes: each validates, names the model its file is named after, and
trains a few steps on the real data samples (skipped when ../shared/data is absent)."""

import itertools
from dataclasses import replace
from pathlib import Path

import pytest

from ctr.recipe import load_recipe
from ctr.train.runner import train
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.slow  # end-to-end runs: `make test` runs them, `make test-fast` does not

ROOT = Path(__file__).resolve().parents[1]
MOVIELENS = sorted((ROOT / "recipes" / "movielens").glob("*.yaml"))
TABULAR = {"lr", "wdl", "deepfm", "dcn", "dcnv2", "dlrm", "autoint", "autoint_plus"}
# recipes/amazon_beauty also holds one recipe per embedding method (tests/train/test_amazon_recipes.py)
DIN_FORMS = {"din", "din_authors"}  # DIN as in its paper, and as the authors' later code
BEAUTY = sorted(p for p in (ROOT / "recipes" / "amazon_beauty").glob("*.yaml") if p.stem in TABULAR | DIN_FORMS)


def test_every_tabular_model_has_a_movielens_recipe_and_beauty_has_din_and_deepfm():
    assert {p.stem for p in MOVIELENS} >= TABULAR
    assert {p.stem for p in BEAUTY} >= {"din", "deepfm"}


@pytest.mark.parametrize("path", MOVIELENS + BEAUTY, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_validates_and_names_its_model(path):
    assert load_recipe(path).model.name == ("din" if path.stem in DIN_FORMS else path.stem)


DATA = {"movielens": SHARED_DATA / "movielens", "amazon_beauty": SHARED_DATA / "amazon" / "Beauty.txt"}
BEAUTY_USERS = 3000  # of the 22,363: two steps and the evaluations of a DIN in seconds


def smoke(path: Path, tmp_path: Path, data: Path) -> dict:
    """Two training steps of the recipe on ``data`` (the shared sample or a part of it), then its evaluation."""
    overrides = [f"data.path={data}", f"data.cache_dir={tmp_path.parent / 'cache'}",
                 "train.max_steps=2", "train.eval_every_n_steps=2", "train.epochs=1", "trainer.progress_bar=false", "trainer.num_threads=1"]
    return train(replace(load_recipe(path, overrides), name=path.stem), tmp_path / "run")


@pytest.fixture(scope="module")
def beauty_head(tmp_path_factory) -> Path:
    """The first ``BEAUTY_USERS`` histories of the shared Amazon Beauty sample, with the
    attributes file beside them as a link to the shared one."""
    folder = tmp_path_factory.mktemp("beauty")
    with DATA["amazon_beauty"].open() as lines:
        (folder / "Beauty.txt").write_text("".join(itertools.islice(lines, BEAUTY_USERS)))
    (folder / "Beauty_item2attributes.json").symlink_to(DATA["amazon_beauty"].with_name("Beauty_item2attributes.json"))
    return folder / "Beauty.txt"


@pytest.mark.skipif(not (SHARED_DATA / "movielens").is_dir(), reason="needs ../shared/data/movielens (real MovieLens-100K)")
@pytest.mark.parametrize("path", MOVIELENS, ids=lambda p: p.stem)
def test_movielens_recipe_trains(path, tmp_path):
    metrics = smoke(path, tmp_path, DATA["movielens"])
    assert 0 < metrics["test"]["auc"] <= 1 and metrics["steps"] == 2


@pytest.mark.skipif(not (SHARED_DATA / "amazon" / "Beauty.txt").is_file(), reason="needs ../shared/data/amazon (real Amazon Beauty)")
@pytest.mark.parametrize("path", BEAUTY, ids=lambda p: p.stem)
def test_beauty_recipe_trains_and_reports_group_auc(path, tmp_path, beauty_head):
    metrics = smoke(path, tmp_path, beauty_head)
    assert "gauc" in metrics["test"] and metrics["steps"] == 2
