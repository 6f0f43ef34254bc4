"""The two real samples laid out for DIN, read through the generic ``csv`` dataset as
docs/data.md shows: FuxiCTR's Taobao sample (a ``^``-separated click sequence sharing the ad
table) and PaddleRec's DIN format (``;`` columns holding space-separated histories). DIN
trains on each (skipped when ../shared/data is absent)."""

import pyarrow.parquet as pq
import pytest

from ctr.datasets import prepare
from ctr.recipe import recipe_from_dict
from ctr.train.runner import train
from tests.conftest import SHARED_DATA

TAOBAO = SHARED_DATA / "taobao" / "taobao_ad_sample.csv"
DIN_FORMAT = SHARED_DATA / "amazon" / "din_format_sample.txt"


def _taobao(tmp_path) -> dict:
    return {"seed": 1, "trainer": {"progress_bar": False, "num_threads": 1},
            "train": {"epochs": 1, "batch_size": 16, "early_stop": {"monitor": "valid/logloss", "mode": "min"}},
            "model": {"name": "din"},
            "data": {"dataset": "csv", "path": str(TAOBAO), "label": "clk", "group": "userid",
                     "cache_dir": str(tmp_path / "cache"), "split": {"valid": 0.2, "test": 0.2},
                     "features": [{"name": "userid"}, {"name": "adgroup_id"}, {"name": "cate_id"},
                                  {"name": "price", "kind": "numeric", "transform": "log1p"},
                                  {"name": "click_sequence", "kind": "sequence", "splitter": "^", "max_len": 50,
                                   "share_with": "adgroup_id", "pooling": "none", "padding": "left"}]}}


def _din_format(tmp_path) -> dict:
    history = {"kind": "sequence", "splitter": " ", "max_len": 20, "pooling": "none"}
    return {"seed": 1, "trainer": {"progress_bar": False, "num_threads": 1},
            "train": {"epochs": 1, "batch_size": 16},
            "model": {"name": "din"},
            "data": {"dataset": "csv", "path": str(DIN_FORMAT), "delimiter": ";", "header": False,
                     "columns": ["hist_items", "hist_cats", "target_item", "target_cat", "label"],
                     "cache_dir": str(tmp_path / "cache"), "split": {"valid": 0.2, "test": 0.2},
                     "features": [{"name": "target_item"}, {"name": "target_cat"},
                                  {"name": "hist_items", "share_with": "target_item", **history},
                                  {"name": "hist_cats", "share_with": "target_cat", **history}]}}


def _longest_history(prepared, column: str) -> int:
    lengths = [len(h) for split in ("train", "valid", "test") for file in prepared.split_dir(split).glob("*.parquet")
               for h in pq.read_table(file).column(column).to_pylist()]
    return max(lengths)


@pytest.mark.skipif(not TAOBAO.is_file(), reason="needs ../shared/data/taobao (real Taobao sample)")
def test_taobao_sample_reads_its_click_sequence_into_the_ad_table_and_trains_din(tmp_path):
    raw = _taobao(tmp_path)
    prepared = prepare(recipe_from_dict(raw).data, progress=False)
    sequence = prepared.schema.feature("click_sequence")
    assert sequence.table == "adgroup_id" and prepared.report["splits"]["train"]["rows"] == 65
    longest = max(len(line.rsplit(",", 1)[1].strip().split("^")) for line in TAOBAO.read_text().splitlines()[1:])
    assert _longest_history(prepared, "click_sequence") == min(longest, 50)
    metrics = train(recipe_from_dict(raw), tmp_path / "run")
    assert metrics["steps"] == 4 and 0 <= metrics["test"]["auc"] <= 1  # 65 rows: the 1-row last batch dropped


@pytest.mark.skipif(not DIN_FORMAT.is_file(), reason="needs ../shared/data/amazon (DIN-format sample)")
def test_din_format_sample_reads_its_histories_and_trains_din(tmp_path):
    raw = _din_format(tmp_path)
    prepared = prepare(recipe_from_dict(raw).data, progress=False)
    assert prepared.schema.feature("hist_cats").table == "target_cat"
    longest = max(len(line.split(";")[0].split()) for line in DIN_FORMAT.read_text().splitlines())
    assert _longest_history(prepared, "hist_items") == min(longest, 20)
    metrics = train(recipe_from_dict(raw), tmp_path / "run")
    assert 0 <= metrics["test"]["auc"] <= 1
