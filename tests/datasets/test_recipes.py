"""The per-dataset recipes validate, and prepare their default data (../shared/data)."""

from pathlib import Path

import pytest

from ctr.datasets import prepare
from ctr.recipe import load_recipe
from tests.conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[2]
RECIPES = {
    "criteo": (1_999, 0.15, 0.3),
    "avazu": (2_994, 0.1, 0.3),
    "ipinyou": (26_773 + 21_150, 0.001, 0.02),
    "movielens": (72_855, 0.7, 0.8),
}


@pytest.mark.parametrize("dataset", sorted(RECIPES))
def test_recipe_validates_and_reads_shared_data(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes name ../shared/data relative to the repository root
    recipe = load_recipe(ROOT / "recipes" / dataset / "dlrm.yaml", [f"data.cache_dir={tmp_path}"])
    assert recipe.data.dataset == dataset and recipe.model.name == "dlrm"
    if not (SHARED_DATA / dataset).is_dir():
        pytest.skip(f"needs ../shared/data/{dataset} (real data sample)")
    splits = prepare(recipe.data, progress=False).report["splits"]
    rows, low, high = RECIPES[dataset]
    assert sum(s["rows"] for s in splits.values()) == rows
    positives = sum(s["rows"] * s["positive_rate"] for s in splits.values()) / rows
    assert low < positives < high
