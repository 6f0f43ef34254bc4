"""Which ``data.split`` keys decide the rows of one split (``split_keys_of``, what ``ctr eval
--split`` compares with the recipe the run began with): an edit of a key it leaves out scores
the split's rows as they were, one of a key it names moves them."""

import pyarrow.parquet as pq
import pytest

from ctr.datasets import prepare
from ctr.datasets.preprocess import encode_with_schema
from ctr.recipe import recipe_from_dict
from ctr.registry import DATASETS
from tests.conftest import tiny_recipe
from tests.datasets.test_cache_key import file_data
from tests.datasets.test_movielens import write_movielens


def synthetic(tmp_path):
    return tiny_recipe(tmp_path)["data"]


def csv(tmp_path):
    return file_data(tmp_path, "csv", held_out=())


def csv_with_a_test_file(tmp_path):
    return file_data(tmp_path, "csv", held_out=["test"])


def movielens(tmp_path):
    ratings = [(1 + k % 7, 10 * (1 + k % 5), 1 + k % 5) for k in range(60)]
    return {"dataset": "movielens", "path": str(write_movielens(tmp_path / "ml", ratings)),
            "cache_dir": str(tmp_path / "cache")}


CASES = [  # the data, the split scored, edits that keep its rows, an edit that moves them
    (synthetic, "valid", [{"test": 0.3}], {"seed": 7}),
    (csv, "valid", [{"test": 0.3}], {"valid": 0.3}),
    (csv, "test", [], {"valid": 0.3}),
    (movielens, "valid", [{"test": 0.3}], {"valid": 0.3}),
    (csv_with_a_test_file, "test", [{"valid": 0.3}, {"seed": 7}], None),  # read from its file
]


def scored_rows(data: dict, split: str, schema_root, out):
    """The rows ``ctr eval --split split`` scores of ``data``, encoded with the saved schema."""
    encode_with_schema(recipe_from_dict({"data": data}).data, schema_root, out, split, progress=False)
    return pq.read_table(out / split)


@pytest.mark.parametrize(("make", "split", "keeping", "moving"), CASES,
                         ids=[f"{case[0].__name__}-{case[1]}" for case in CASES])
def test_a_split_s_rows_move_with_the_keys_that_decide_them_only(tmp_path, make, split, keeping, moving):
    data = make(tmp_path)
    root = prepare(recipe_from_dict({"data": data}).data, progress=False).root
    before = scored_rows(data, split, root, tmp_path / "before")
    for number, edit in enumerate([*keeping, moving]):
        if edit is None:
            continue
        now = {**data, "split": {**data.get("split", {}), **edit}}
        source = DATASETS.get(now["dataset"]).target(recipe_from_dict({"data": now}).data)
        rows = scored_rows(now, split, root, tmp_path / f"edit{number}")
        assert rows.equals(before) == (edit is not moving), edit
        assert (set(edit) <= set(source.split_keys_of(split))) == (edit is moving), edit
