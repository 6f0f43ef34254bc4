import json
import logging
import re
import shutil

import numpy as np
import pytest

from ctr.datasets import BatchLoader, prepare
from ctr.datasets import progress
from ctr.datasets.preprocess import _Job
from ctr.recipe import recipe_from_dict
from ctr.schema import Schema
from tests.conftest import tiny_recipe


def test_prepared_layout_schema_and_report(tiny_prepared):
    root = tiny_prepared.root
    assert (root / "DONE").exists() and (root / "schema.json").exists()
    schema = Schema.load(root)
    assert [f.spec.name for f in schema.dense_features] == [f"I{i}" for i in range(1, 14)]
    c1 = schema.feature("C1")
    assert c1.vocab_size == len(schema.counts["C1"]) and schema.counts["C1"][:2].tolist() == [0, 0]
    splits = tiny_prepared.report["splits"]
    assert sum(s["rows"] for s in splits.values()) == 6000
    assert 0.75 < splits["train"]["rows"] / 6000 < 0.85
    assert json.loads((root / "report.json").read_text()) == tiny_prepared.report


def test_vocabulary_ids_ordered_by_training_count(tiny_prepared):
    counts = tiny_prepared.schema.counts["C3"][2:]
    assert (np.diff(counts) <= 0).all()


def test_cache_is_reused(tmp_path):
    recipe = recipe_from_dict(tiny_recipe(tmp_path))
    first = prepare(recipe.data, progress=False)
    stamp = (first.root / "DONE").stat().st_mtime_ns
    second = prepare(recipe.data, progress=False)
    assert second.root == first.root and (second.root / "DONE").stat().st_mtime_ns == stamp


def test_other_features_other_cache_entry(tmp_path):
    raw = tiny_recipe(tmp_path)
    a = prepare(recipe_from_dict(raw).data, progress=False)
    raw["data"]["features"] = [{"name": "C1"}, {"name": "I1", "kind": "numeric", "transform": "standardize"}]
    b = prepare(recipe_from_dict(raw).data, progress=False)
    assert a.root != b.root
    i1 = b.schema.feature("I1").numeric
    assert i1.std > 0 and i1.mean > 0


def test_preparation_without_a_bar_logs_the_rows_read(tmp_path, monkeypatch, caplog):
    """With stderr not a terminal (a log file, a pipe) preparing 2M Criteo rows printed
    nothing for 23 s (the bar is off there): each pass now logs the rows it has read every
    PROGRESS_LOG_SECONDS (here 0: every batch); with the bar on, it logs none."""
    monkeypatch.setattr(progress, "PROGRESS_LOG_SECONDS", 0.0)
    caplog.set_level(logging.INFO)
    prepare(recipe_from_dict(tiny_recipe(tmp_path)).data, progress=False)
    line = r"data: (fitting vocabularies|encoding): [\d,]+ rows read \([\d,]+ rows/s\)"
    read = [m for m in caplog.messages if re.fullmatch(line, m)]
    assert any(m.startswith("data: fitting vocabularies: ") for m in read)
    assert read[-1].startswith("data: encoding: 6,000 rows read")
    caplog.clear()
    prepare(recipe_from_dict(tiny_recipe(tmp_path / "bar")).data, progress=True)
    assert not [m for m in caplog.messages if "rows read" in m]


def test_killed_preparation_leaves_no_usable_entry(tmp_path, monkeypatch):
    recipe = recipe_from_dict(tiny_recipe(tmp_path))
    original = _Job._schema

    def crash(self, *args):
        raise KeyboardInterrupt  # as if killed after the shards were written

    monkeypatch.setattr(_Job, "_schema", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare(recipe.data, progress=False)
    cache = tmp_path / "cache" / "data"
    assert not any((p / "DONE").exists() for p in cache.iterdir())
    monkeypatch.setattr(_Job, "_schema", original)
    prepared = prepare(recipe.data, progress=False)
    assert (prepared.root / "DONE").exists()
    assert sum(s["rows"] for s in prepared.report["splits"].values()) == 6000


def test_a_file_at_the_entry_s_name_is_replaced_by_the_entry(tmp_path):
    """A stray file named as the entry (one `ctr data clean` removes as "not an entry") failed
    the preparation at its end, naming its temporary folder: "...tmp-123-ab12cd34: not a directory"."""
    recipe = recipe_from_dict(tiny_recipe(tmp_path))
    root = prepare(recipe.data, progress=False).root
    shutil.rmtree(root)
    root.write_text("hi\n")
    prepared = prepare(recipe.data, progress=False)
    assert prepared.root == root and (root / "DONE").is_file()
    assert sum(s["rows"] for s in prepared.report["splits"].values()) == 6000
    assert sorted(p.name for p in root.parent.iterdir()) == [root.name]


def test_loader_covers_each_row_once_and_shuffles_by_seed(tiny_prepared):
    folder, schema = tiny_prepared.split_dir("train"), tiny_prepared.schema
    plain = BatchLoader(folder, schema, 500, shuffle=False)
    labels = np.concatenate([b.labels.numpy() for b in plain])
    assert labels.shape[0] == plain.rows == tiny_prepared.report["splits"]["train"]["rows"]
    first = [b.sparse.values[:5].tolist() for b in BatchLoader(folder, schema, 500, shuffle=True, seed=3)]
    again = [b.sparse.values[:5].tolist() for b in BatchLoader(folder, schema, 500, shuffle=True, seed=3)]
    other = [b.sparse.values[:5].tolist() for b in BatchLoader(folder, schema, 500, shuffle=True, seed=4)]
    assert first == again and first != other


def test_loader_splits_rows_across_ranks(tiny_prepared):
    folder, schema = tiny_prepared.split_dir("train"), tiny_prepared.schema
    ranks = [BatchLoader(folder, schema, 256, rank=r, world_size=2, prefetch=0) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    dense = [np.concatenate([b.dense.numpy() for b in loader]) for loader in ranks]
    rows_a = {r.tobytes() for r in dense[0]}
    assert not rows_a & {r.tobytes() for r in dense[1]}


def test_a_file_rewritten_at_the_same_size_within_the_second_is_encoded_again(tmp_path):
    """The cache key held the modification time in whole seconds: a file rewritten at the
    same size in the same second kept its stale encoding (and `ctr data clean` agreed)."""
    import os

    from ctr.datasets.cache import stale_entries

    data = tmp_path / "clicks.csv"
    raw = {"data": {"dataset": "csv", "path": str(data), "label": "label", "features": [{"name": "a"}],
                    "cache_dir": str(tmp_path / "cache"), "split": {"valid": 0.0, "test": 0.0}}}
    data.write_text("label,a\n1,x\n0,y\n")
    os.utime(data, ns=(1_700_000_000_100_000_000,) * 2)
    first = prepare(recipe_from_dict(raw).data, progress=False)
    data.write_text("label,a\n0,q\n0,r\n")
    os.utime(data, ns=(1_700_000_000_600_000_000,) * 2)
    assert [entry.reason for entry in stale_entries(tmp_path / "cache" / "data")] == [f"input {data.resolve()} changed"]
    second = prepare(recipe_from_dict(raw).data, progress=False)
    assert second.root != first.root and second.report["splits"]["train"]["positive_rate"] == 0.0


def test_standardize_keeps_the_std_of_values_far_from_zero(tmp_path):
    """Millisecond times within one second (std 291): E[x^2] - E[x]^2 cancelled to a
    negative variance, so the std became 1 and standardized values spread over ±500."""
    times = 1.7e12 + np.random.default_rng(0).integers(0, 1000, 2000).astype(float)
    path = tmp_path / "rows.csv"
    path.write_text("t,label\n" + "".join(f"{t:.0f},{i % 2}\n" for i, t in enumerate(times)))
    raw = {"data": {"dataset": "csv", "path": str(path), "cache_dir": str(tmp_path / "cache"),
                    "split": {"valid": 0.0, "test": 0.0},
                    "features": [{"name": "t", "kind": "numeric", "transform": "standardize"}]}}
    prepared = prepare(recipe_from_dict(raw).data, progress=False)
    stats = prepared.schema.feature("t").numeric
    assert stats.mean == pytest.approx(times.mean()) and stats.std == pytest.approx(times.std(), rel=1e-9)
    loader = BatchLoader(prepared.split_dir("train"), prepared.schema, 4096)
    assert next(iter(loader)).dense[:, 0].std().item() == pytest.approx(1.0, rel=1e-3)


def test_standardize_takes_a_column_constant_up_to_rounding_as_constant():
    """A column of 0.1: its mean rounds to 0.10000000000000002 and its std was that rounding
    (1.4e-17), so training rows became ±1 noise and a valid value of 0.2 became 7e15."""
    from ctr.datasets.fit import NumericFitter
    from ctr.datasets.transforms import finish_numeric
    from ctr.schema import FeatureSpec

    spec = FeatureSpec(name="c", kind="numeric", transform="standardize")
    fitter = NumericFitter(spec, seed=0)
    for _ in range(3):
        fitter.add(np.full(1000, 0.1))
    stats = fitter.result()
    assert stats.std == 1.0
    assert finish_numeric(np.array([0.1, 0.2]), spec, stats) == pytest.approx([0.0, 0.1], abs=1e-6)


def test_a_standardized_value_far_outside_the_training_spread_stays_finite():
    from ctr.datasets.fit import NumericFitter
    from ctr.datasets.transforms import finish_numeric
    from ctr.schema import FeatureSpec

    spec = FeatureSpec(name="c", kind="numeric", transform="standardize")
    fitter = NumericFitter(spec, seed=0)
    fitter.add(np.linspace(0.0, 1e-3, 1000))
    encoded = finish_numeric(np.array([3e38, -3e38]), spec, fitter.result())
    assert np.isfinite(encoded).all() and encoded[0] > 1e38 and encoded[1] < -1e38
