"""Input to an accelerator: the pinned / one-step-ahead path (a no-op on CPU), the resident
loader (``data.on_device``), and ``num_ids`` features (integer ids, no vocabulary counted)."""

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml

from ctr.batch import Batch
from ctr.datasets import BatchLoader, prepare
from ctr.datasets.resident import ResidentLoader
from ctr.datasets.transfer import ahead_on_device, needs_pinning
from ctr.datasets.vocab import IdCounter, IdentityVocabulary
from ctr.errors import DataError
from ctr.recipe import recipe_from_dict
from ctr.schema import FeatureSpec
from tests.conftest import tiny_recipe


def _same(a: Batch, b: Batch) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors())) and a.sparse.single == b.sparse.single


def test_transfer_path_is_a_no_op_on_cpu(tiny_prepared):
    folder, schema = tiny_prepared.split_dir("train"), tiny_prepared.schema
    assert not needs_pinning(torch.device("cpu"))
    batches = list(BatchLoader(folder, schema, 700, prefetch=0))
    passed = list(ahead_on_device(iter(batches), torch.device("cpu")))
    assert all(a is b for a, b in zip(batches, passed)) and len(passed) == len(batches)
    on_cpu = list(BatchLoader(folder, schema, 700, device="cpu"))
    assert all(_same(a, b) for a, b in zip(batches, on_cpu))


def test_resident_loader_serves_the_streaming_loaders_batches(tiny_prepared):
    folder, schema = tiny_prepared.split_dir("train"), tiny_prepared.schema
    streamed = list(BatchLoader(folder, schema, 512, prefetch=0))
    resident = ResidentLoader(folder, schema, 512, "cpu")
    held = list(resident)
    assert len(held) == len(resident) == len(streamed)
    assert all(_same(a, b) for a, b in zip(streamed, held))


def test_resident_shuffle_is_a_seeded_permutation_per_epoch(tiny_prepared):
    folder, schema = tiny_prepared.split_dir("train"), tiny_prepared.schema
    labels = lambda batches: torch.cat([b.dense[:, 0] for b in batches])  # noqa: E731
    plain = labels(ResidentLoader(folder, schema, 512, "cpu"))
    loader = ResidentLoader(folder, schema, 512, "cpu", shuffle=True, seed=3)
    epoch0, epoch1 = labels(loader), labels(loader)
    again = labels(ResidentLoader(folder, schema, 512, "cpu", shuffle=True, seed=3))
    assert torch.equal(epoch0.sort().values, plain.sort().values) and not torch.equal(epoch0, plain)
    assert torch.equal(epoch0, again) and not torch.equal(epoch0, epoch1)


def test_ranks_hold_disjoint_equal_shares(tiny_prepared):
    folder, schema = tiny_prepared.split_dir("train"), tiny_prepared.schema
    total = tiny_prepared.report["splits"]["train"]["rows"]
    shares = [ResidentLoader(folder, schema, 256, "cpu", rank=r, world_size=2) for r in (0, 1)]
    assert shares[0].rows == shares[1].rows == total // 2
    held = [{row.numpy().tobytes() for row in share.data} for share in shares]
    whole = {row.numpy().tobytes() for row in ResidentLoader(folder, schema, 256, "cpu").data}
    assert not held[0] & held[1] and held[0] | held[1] <= whole and len(held[0] | held[1]) == 2 * (total // 2)


def test_num_ids_features_keep_every_id_as_a_row(tmp_path):
    sizes = [2, 3, 50, 40, 5, 2, 9, 4, 2, 30, 6, 20, 3, 2, 8, 25, 2, 4, 3, 2, 20, 2, 2, 10, 2, 7]
    raw = tiny_recipe(tmp_path, data={"integer_ids": True, "vocab_sizes": sizes, "vocab_scale": 1.0})
    prepared = prepare(recipe_from_dict(raw).data, progress=False)
    tables = prepared.schema.tables()
    assert [tables[f"C{j + 1}"] for j in range(26)] == [v + 2 for v in sizes]  # padding + OOV + every id
    counts = prepared.schema.counts["C3"]
    assert counts[:2].sum() == 0 and counts[2:].sum() == prepared.report["splits"]["train"]["rows"]
    batch = next(iter(BatchLoader(prepared.split_dir("train"), prepared.schema, 100)))
    assert int(batch.sparse.values.min()) >= 2 and batch.sparse.single


def test_identity_vocabulary_encodes_ids_and_counts_them():
    spec = FeatureSpec(name="c", num_ids=4)
    counter = IdCounter(4, "c")
    counter.add(pa.array([0, 3, 3, None, 9]))
    vocab = IdentityVocabulary(counter, spec)
    ids, oov = vocab.encode(pa.array([0, 3, None, 4, -1]))
    assert ids.tolist() == [2, 5, 0, 1, 1] and oov == 2
    assert vocab.size == 6 and vocab.counts_by_id().tolist() == [0, 0, 1, 0, 0, 2]
    with pytest.raises(DataError, match="feature 'c' has num_ids set"):
        vocab.encode(pa.array(["a"]))


def test_num_ids_is_only_for_plain_categoricals():
    with pytest.raises(ValueError, match="num_ids"):
        FeatureSpec(name="s", kind="sequence", num_ids=10)
    with pytest.raises(ValueError, match="num_ids"):
        FeatureSpec(name="c", num_ids=0)
    assert np.int64(FeatureSpec(name="c", num_ids=7).num_ids) == 7


def test_num_ids_values_are_checked_row_by_row(tmp_path, capsys):
    """A value that is not an integer id is a row error naming file and line (skipped with
    on_bad_rows: skip); blanks around an id and a zero fraction are read (the whole column
    failed with one message naming no row, and skip did not skip)."""
    from ctr.cli import main

    path = tmp_path / "rows.csv"
    path.write_text("label,c\n1,3\n0, 2 \n1,1.0\n0,x\n1,\n")
    data = {"dataset": "csv", "path": str(path), "cache_dir": str(tmp_path / "cache"),
            "features": [{"name": "c", "num_ids": 5}], "split": {"valid": 0.0, "test": 0.0}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"data": data}))
    assert main(["data", "prepare", str(tmp_path / "r.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"ctr: error: {path}:5: column 'c': not an integer id: 'x'"
    path.write_text("label,c\n1,3\n0,9223372036854775808\n")  # past int64
    assert main(["data", "prepare", str(tmp_path / "r.yaml")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"ctr: error: {path}:3: column 'c': not an integer id: '9223372036854775808'")
    path.write_text("label,c\n1,3\n0, 2 \n1,1.0\n0,x\n1,\n")
    prepared = prepare(recipe_from_dict({"data": {**data, "on_bad_rows": "skip"}}).data, progress=False)
    assert prepared.report["splits"]["train"]["rows"] == 4
    batch = next(iter(BatchLoader(prepared.split_dir("train"), prepared.schema, 10)))
    assert batch.sparse.values.tolist() == [3 + 2, 2 + 2, 1 + 2, 0]  # ids after padding and OOV; missing → padding


def test_a_feature_sharing_a_num_ids_table_has_its_values_checked_row_by_row(tmp_path, capsys):
    """Its column is read as ids too: a value that is not one failed the whole preparation with
    "feature 'a' has num_ids set ..." (the owner, whose column was fine), naming no file or line."""
    from ctr.cli import main

    path = tmp_path / "rows.csv"
    path.write_text("label,a,b\n1,1,2\n0,3,x\n1,5,12\n")
    data = {"dataset": "csv", "path": str(path), "cache_dir": str(tmp_path / "cache"), "split": {"valid": 0.0, "test": 0.0},
            "features": [{"name": "a", "num_ids": 10}, {"name": "b", "share_with": "a"}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"data": data}))
    assert main(["data", "prepare", str(tmp_path / "r.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"ctr: error: {path}:3: column 'b': not an integer id: 'x'"
    prepared = prepare(recipe_from_dict({"data": {**data, "on_bad_rows": "skip"}}).data, progress=False)
    assert prepared.report["splits"]["train"]["rows"] == 2 and prepared.report["splits"]["train"]["skipped_bad_rows"] == 1


def test_num_ids_at_either_end_of_int64_are_read_exactly(tmp_path, capsys):
    """2**63 - 1 was refused as 'not an integer id' (checked through float64, which reads it
    as 2**63) whenever its batch held a value the int64 cast refuses (3.0, or a bad row),
    and a zero fraction was read through float64 (9007199254740993.0 became ...992)."""
    from ctr.cli import main

    path = tmp_path / "rows.csv"
    path.write_text("label,c\n1,9223372036854775807\n0,-9223372036854775808.0\n1,+2\n0,9007199254740993.0\n"
                    "1,x\n0,9223372036854775808\n1,-9223372036854775809\n")
    data = {"dataset": "csv", "path": str(path), "cache_dir": str(tmp_path / "cache"),
            "features": [{"name": "c", "num_ids": 5, "oov_buckets": 4}], "split": {"valid": 0.0, "test": 0.0}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"data": data}))
    assert main(["data", "prepare", str(tmp_path / "r.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"ctr: error: {path}:6: column 'c': not an integer id: 'x'"
    prepared = prepare(recipe_from_dict({"data": {**data, "on_bad_rows": "skip"}}).data, progress=False)
    assert prepared.report["splits"]["train"]["rows"] == 4
    batch = next(iter(BatchLoader(prepared.split_dir("train"), prepared.schema, 10)))
    # ids past num_ids land in bucket 1 + id mod 4; known ids follow padding and the 4 buckets
    assert batch.sparse.values.tolist() == [1 + 3, 1 + 0, 2 + 5, 1 + 1]
