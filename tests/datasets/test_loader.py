import threading

import numpy as np
import pyarrow.parquet as pq
import pytest

from ctr.datasets import BatchLoader
from ctr.datasets.buffer import ShuffleBuffer
from ctr.datasets.rows import RowBlock


def row_ids(batches):
    """Identifies rows by their dense values (unique per row in the synthetic data)."""
    return [tuple(r) for b in batches for r in b.dense.numpy().round(5).tolist()]


def test_every_row_once_in_file_order_without_shuffle(tiny_prepared):
    folder, schema = tiny_prepared.split_dir("train"), tiny_prepared.schema
    first = row_ids(BatchLoader(folder, schema, 700))
    assert first == row_ids(BatchLoader(folder, schema, 333, prefetch=0))
    assert len(first) == tiny_prepared.report["splits"]["train"]["rows"] == len(set(first))


@pytest.mark.parametrize("buffer", [50, 1_000, 1_000_000])
def test_shuffle_is_a_permutation_deterministic_by_seed_and_epoch(tiny_prepared, buffer):
    folder, schema = tiny_prepared.split_dir("train"), tiny_prepared.schema
    plain = row_ids(BatchLoader(folder, schema, 512))
    loader = BatchLoader(folder, schema, 512, shuffle=True, seed=3, shuffle_buffer=buffer)
    epoch0, epoch1 = row_ids(loader), row_ids(loader)
    again = row_ids(BatchLoader(folder, schema, 512, shuffle=True, seed=3, shuffle_buffer=buffer))
    other = row_ids(BatchLoader(folder, schema, 512, shuffle=True, seed=4, shuffle_buffer=buffer))
    assert sorted(epoch0) == sorted(plain) and epoch0 != plain
    assert epoch0 == again and epoch0 != epoch1 and epoch0 != other


def test_a_buffer_as_large_as_the_split_mixes_the_whole_split(tiny_prepared):
    folder, schema = tiny_prepared.split_dir("train"), tiny_prepared.schema
    plain = row_ids(BatchLoader(folder, schema, 512))
    position = {row: i for i, row in enumerate(plain)}
    first_batch = row_ids([next(iter(BatchLoader(folder, schema, 512, shuffle=True, prefetch=0)))])
    spread = np.array([position[r] for r in first_batch]) / len(plain)
    assert spread.min() < 0.1 and spread.max() > 0.9  # drawn from all over the split


def test_shuffle_buffer_holds_at_most_its_capacity():
    rows = RowBlock(np.arange(10_000, dtype=np.int32).reshape(-1, 1))
    buffer = ShuffleBuffer(300, np.random.default_rng(0))
    blocks = (rows.take(slice(s, s + 1_000)) for s in range(0, 10_000, 1_000))
    out = []
    for block in buffer.mix(blocks):
        assert buffer.store.rows == 300
        out.append(block.data[:, 0])
    out = np.concatenate(out)
    assert sorted(out.tolist()) == list(range(10_000))
    # rows leave the buffer late in proportion to its size, not as they came
    assert np.abs(out - np.arange(10_000)).mean() > 100


def test_ranks_get_disjoint_equal_shares(tiny_prepared):
    folder, schema = tiny_prepared.split_dir("train"), tiny_prepared.schema
    total = tiny_prepared.report["splits"]["train"]["rows"]
    for shuffle in (False, True):
        loaders = [BatchLoader(folder, schema, 256, shuffle=shuffle, rank=r, world_size=3) for r in range(3)]
        shares = [row_ids(loader) for loader in loaders]
        assert len({len(loader) for loader in loaders}) == 1
        assert [len(s) for s in shares] == [total // 3] * 3
        assert len(set().union(*map(set, shares))) == 3 * (total // 3)


def test_batches_have_the_batch_size_and_drop_last(tiny_prepared):
    folder, schema = tiny_prepared.split_dir("train"), tiny_prepared.schema
    loader = BatchLoader(folder, schema, 1000, shuffle=True, drop_last=True, shuffle_buffer=700)
    sizes = [b.size for b in loader]
    assert sizes == [1000] * len(loader) and len(loader) == loader.rows // 1000


@pytest.mark.parametrize("kind", ["streaming", "resident"])
def test_a_last_batch_below_min_rows_is_dropped(tiny_prepared, kind):
    """Training drops a one-row last batch (BatchNorm needs two rows); evaluation keeps it."""
    from ctr.datasets.resident import ResidentLoader

    folder, schema = tiny_prepared.split_dir("train"), tiny_prepared.schema
    rows = tiny_prepared.report["splits"]["train"]["rows"]
    make = BatchLoader if kind == "streaming" else lambda *a, **k: ResidentLoader(*a, device="cpu", **k)
    for size, min_rows, sizes in ((rows - 1, 2, [rows - 1]), (rows - 1, 0, [rows - 1, 1]),
                                  (rows - 2, 2, [rows - 2, 2])):
        loader = make(folder, schema, size, shuffle=True, min_rows=min_rows)
        assert [b.size for b in loader] == sizes and len(loader) == len(sizes)


def test_split_batches_drop_a_last_batch_whose_smallest_part_is_below_min_rows(tiny_prepared):
    folder, schema = tiny_prepared.split_dir("train"), tiny_prepared.schema
    rows = tiny_prepared.report["splits"]["train"]["rows"]
    for rest, min_rows, kept in ((3, 2, False), (4, 2, True), (1, 0, True)):  # parts of 3 rows: 1 and 2; ...
        parts = [BatchLoader(folder, schema, rows - rest, min_rows=min_rows, rank=r, world_size=2, split_batches=True)
                 for r in range(2)]
        assert [[b.size for b in part] for part in parts] == [
            [(rows - rest) // 2] + [rest // 2] * kept, [rows - rest - (rows - rest) // 2] + [rest - rest // 2] * kept]
        assert len(parts[0]) == 1 + kept  # evaluation (min_rows 0) keeps a last batch of 1 row: parts 0 and 1


def test_sequences_and_groups_survive_packing(tmp_path):
    from ctr.datasets import prepare
    from ctr.recipe import recipe_from_dict

    path = tmp_path / "rows.csv"
    path.write_text("label,user,tags\n1,u1,a^b^c\n0,u2,\n1,u1,c\n0,u3,b^a\n")
    raw = {"data": {"dataset": "csv", "path": str(path), "cache_dir": str(tmp_path / "c"), "group": "user",
                    "split": {"valid": 0.0, "test": 0.0},
                    "features": [{"name": "user"}, {"name": "tags", "kind": "sequence", "max_len": 2}]}}
    recipe = recipe_from_dict(raw)
    prepared = prepare(recipe.data, progress=False)
    batch = next(iter(BatchLoader(prepared.split_dir("train"), prepared.schema, 10)))
    assert batch.sparse.lengths().tolist() == [1, 1, 1, 1, 2, 0, 1, 2]
    groups = batch.groups.tolist()
    assert groups[0] == groups[2] and len(set(groups)) == 3
    assert batch.labels.tolist() == [1.0, 0.0, 1.0, 0.0]
    tokens = pq.read_table(prepared.root / "vocab" / "tags.parquet").column("token").to_pylist()
    id_of = {token: 2 + i for i, token in enumerate(tokens)}  # after padding 0 and OOV 1
    start, end = batch.sparse.feature_slice("tags")
    assert batch.sparse.values[start:end].tolist() == [id_of["b"], id_of["c"], id_of["c"], id_of["b"], id_of["a"]]


def test_packed_rows_past_the_machines_memory_name_the_widest_sequence(tmp_path):
    """A sequence's max_len in the trillions ended in numpy's 'Unable to allocate 14.6 TiB'
    once the loader packed its first row group: one line naming the sequence, before any."""
    from ctr.datasets import prepare
    from ctr.errors import DataError
    from ctr.recipe import recipe_from_dict

    path = tmp_path / "rows.csv"
    path.write_text("label,user,tags\n1,u1,a^b^c\n0,u2,\n")
    raw = {"data": {"dataset": "csv", "path": str(path), "cache_dir": str(tmp_path / "c"),
                    "split": {"valid": 0.0, "test": 0.0},
                    "features": [{"name": "user"}, {"name": "tags", "kind": "sequence", "max_len": 10**12}]}}
    prepared = prepare(recipe_from_dict(raw).data, progress=False)
    for shuffle, holder in ((True, r"the shuffle buffer \(data\.shuffle_buffer 1000000\)"), (False, "a row group")):
        with pytest.raises(DataError, match=rf"^2 packed rows of 1,000,000,000,00\d int32 words \(the widest slot: "
                                            rf"sequence 'tags', max_len 1000000000000\), what {holder} holds, need [^;]*$"):
            BatchLoader(prepared.split_dir("train"), prepared.schema, 10, shuffle=shuffle)


def test_a_shuffle_buffer_past_the_machines_memory_names_its_key(tiny_prepared, monkeypatch):
    """Rows of no wide sequence that a large data.shuffle_buffer holds past the machine's
    memory: the message names the key to lower (it named only "the shuffle buffer")."""
    from ctr.datasets import rows
    from ctr.errors import DataError

    monkeypatch.setattr(rows, "memory_bytes", lambda: 4000)  # a batch of 10 rows fits
    with pytest.raises(DataError, match=r"what the shuffle buffer \(data\.shuffle_buffer 100000\) holds, need .*; "
                                        r"lower data\.shuffle_buffer$"):
        BatchLoader(tiny_prepared.split_dir("train"), tiny_prepared.schema, 10, shuffle=True, shuffle_buffer=100_000)
    with pytest.raises(DataError, match=r"what a row group holds, need [^;]*$"):
        BatchLoader(tiny_prepared.split_dir("train"), tiny_prepared.schema, 10)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_groups_of_single_row_batches(tmp_path, batch_size):
    """A one-row batch (a last batch, or eval_batch_size 1) reads its int64 group from an odd
    int32 column: the slice must be copied before it is viewed as int64."""
    from ctr.datasets import prepare
    from ctr.recipe import recipe_from_dict

    path = tmp_path / "rows.csv"
    path.write_text("label,user,item\n1,u1,a\n0,u2,b\n1,u1,c\n")
    raw = {"data": {"dataset": "csv", "path": str(path), "cache_dir": str(tmp_path / "c"), "group": "user",
                    "split": {"valid": 0.0, "test": 0.0}, "features": [{"name": "item"}]}}
    prepared = prepare(recipe_from_dict(raw).data, progress=False)
    batches = list(BatchLoader(prepared.split_dir("train"), prepared.schema, batch_size))
    groups = [g for batch in batches for g in batch.groups.tolist()]
    assert [b.size for b in batches] == ([1, 1, 1] if batch_size == 1 else [2, 1])
    assert groups[0] == groups[2] != groups[1]


def test_close_stops_an_epoch_left_mid_way_and_joins_its_threads(tiny_prepared):
    before = threading.active_count()
    loader = BatchLoader(tiny_prepared.split_dir("train"), tiny_prepared.schema, 64, shuffle=True, prefetch=2)
    epoch = iter(loader)
    next(epoch)
    assert threading.active_count() > before  # batches built ahead in the background
    loader.close()
    assert threading.active_count() == before
    assert len(list(loader)) == len(loader)  # the loader still serves whole epochs


@pytest.mark.parametrize("kind", ["streaming", "resident"])
def test_a_loader_restored_from_its_state_continues_mid_epoch(tiny_prepared, kind):
    """The state after 3 batches of epoch 1, loaded into a new loader: its next pass hands
    out the rest of epoch 1, and the pass after that epoch 2, as the first loader does."""
    from ctr.datasets.resident import ResidentLoader

    folder, schema = tiny_prepared.split_dir("train"), tiny_prepared.schema
    make = {"streaming": lambda: BatchLoader(folder, schema, 512, shuffle=True, seed=3, shuffle_buffer=1_000),
            "resident": lambda: ResidentLoader(folder, schema, 512, "cpu", shuffle=True, seed=3)}[kind]
    loader = make()
    row_ids(loader)  # epoch 0
    epoch1 = iter(loader)
    head = [next(epoch1) for _ in range(3)]
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches": 3}
    restored = make()
    restored.load_state_dict(state)
    rest = row_ids(epoch1)
    assert row_ids(restored) == rest
    assert sorted(row_ids(head) + rest) == sorted(row_ids(make()))  # the whole epoch, each row once
    assert row_ids(restored) == row_ids(loader)
