"""Every recipes/amazon_beauty recipe runs end to end, all its stages, on a tiny generated
history file in the Amazon (S3-Rec) format; the real Beauty data is not needed."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctr.errors import DataError, UserError
from ctr.recipe import load_recipe
from ctr.train.runner import train

pytestmark = pytest.mark.slow  # end-to-end runs: `make test` runs them, `make test-fast` does not

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "amazon_beauty"
STAGES = {"optembed": ["supernet", "search", "retrain"], "dnis": ["search", "prune", "retrain"]}
SMALL_SEARCH = ["embedding.population=4", "embedding.parents=2", "embedding.mutations=2",
                "embedding.crossovers=2", "embedding.generations=1"]


def write_tiny_amazon(folder: Path, users: int = 300, items: int = 150, categories: int = 8) -> Path:
    """``Tiny.txt`` (``user item item ...`` in time order) and its item → attributes JSON."""
    rng = np.random.default_rng(0)
    popularity = 1.0 / np.arange(1, items + 1)
    popularity /= popularity.sum()
    lines = []
    for user in range(1, users + 1):
        history = rng.choice(np.arange(1, items + 1), size=rng.integers(5, 12), replace=False, p=popularity)
        lines.append(" ".join(map(str, [user, *history])))
    (folder / "Tiny.txt").write_text("\n".join(lines) + "\n")
    attributes = {str(i): [int(rng.integers(categories)), 99] for i in range(1, items + 1)}
    (folder / "Tiny_item2attributes.json").write_text(json.dumps(attributes))
    return folder / "Tiny.txt"


@pytest.fixture(scope="module")
def tiny_amazon(tmp_path_factory):
    folder = tmp_path_factory.mktemp("amazon")
    return write_tiny_amazon(folder), folder / "cache"


@pytest.mark.parametrize("method", ["full", "hash", "unified", "optembed", "dnis"])
def test_recipe_runs_end_to_end_with_all_its_stages(method, tiny_amazon, tmp_path):
    history, cache = tiny_amazon
    overrides = [
        f"data.path={history}", f"data.cache_dir={cache}", "train.batch_size=512",
        "train.epochs=1", "trainer.progress_bar=false",
    ] + (SMALL_SEARCH if method == "optembed" else [])
    recipe = load_recipe(RECIPES / f"{method}.yaml", overrides)
    assert recipe.model.name == "deepfm" and recipe.data.dataset == "amazon"
    metrics = train(recipe, tmp_path / "run")
    budget = recipe.embedding.budget or 1.0
    assert metrics["embedding_bytes"] <= budget * metrics["full_embedding_bytes"]
    assert 0 < metrics["test"]["auc"] <= 1
    stages = STAGES.get(method)
    if stages:
        finished = json.loads((tmp_path / "run" / "stages" / "progress.json").read_text())["finished"]
        assert finished == stages and set(metrics["stage_seconds"]) == set(stages)



def test_predict_scores_histories_too_short_to_train_on(tiny_amazon, tmp_path):
    """Users of three items give valid and test rows only (no training row): predict scores
    all of them, each prefix with its next item and a sampled negative (it failed with
    StopIteration looking for the label in the empty training rows)."""
    from ctr.train.predict import predict

    history, cache = tiny_amazon
    overrides = [f"data.path={history}", f"data.cache_dir={cache}", "train.batch_size=512", "train.epochs=1",
                 "trainer.progress_bar=false"]
    train(load_recipe(RECIPES / "full.yaml", overrides), tmp_path / "run")
    (tmp_path / "Short.txt").write_text("1 3 5 7\n2 4 6 8\n")
    result = predict(tmp_path / "run", tmp_path / "Short.txt", tmp_path / "scores.csv")
    assert result["rows"] == 8  # 2 users × 2 prefixes × (next item, a negative)
    scores = pd.read_csv(tmp_path / "scores.csv")  # each score joins to its user, target and item
    assert list(scores.columns) == ["line", "user_id", "target", "item_id", "score", "label"]
    assert scores[["line", "user_id", "target"]].values.tolist()[::2] == [[1, 1, 2], [2, 2, 2], [1, 1, 3], [2, 2, 3]]
    assert scores["item_id"].tolist()[::2] == [5, 6, 7, 8] and scores["label"].tolist() == [1, 0] * 4


def test_predict_reads_the_attributes_beside_its_input_else_the_trained_ones(tiny_amazon, tmp_path):
    """Without a ``<input>_item2attributes.json`` beside the input, predict failed naming
    data.path; the run's own attributes file serves. One beside the input (new items'
    categories) is read instead."""
    from ctr.train.predict import predict

    history, cache = tiny_amazon
    overrides = [f"data.path={history}", f"data.cache_dir={cache}", "train.batch_size=512", "train.epochs=1",
                 "trainer.progress_bar=false"]
    train(load_recipe(RECIPES / "full.yaml", overrides), tmp_path / "run")
    (tmp_path / "Other.txt").write_text("1 3 5 7\n2 4 6 8\n")
    assert predict(tmp_path / "run", tmp_path / "Other.txt", tmp_path / "a.csv")["rows"] == 8
    (tmp_path / "Other_item2attributes.json").write_text("[")  # beside the input: read first
    with pytest.raises(DataError, match=r"Other_item2attributes\.json:1: invalid JSON"):
        predict(tmp_path / "run", tmp_path / "Other.txt", tmp_path / "b.csv")
    beside = tmp_path / "Other_item2attributes.json"  # read with the input: the scores would replace it
    with pytest.raises(UserError, match=f"^{beside}: is read with the input {tmp_path / 'Other.txt'}; choose another"):
        predict(tmp_path / "run", tmp_path / "Other.txt", beside)
    assert beside.read_text() == "["
