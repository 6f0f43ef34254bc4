"""Streaming preprocessing: raw record batches → vocabularies → encoded parquet shards.

Two passes over the raw rows (fit on training rows, then encode every split), each in Arrow
record batches, so peak memory grows with vocabulary size, not with the number of rows. The
result is a cache entry keyed by a hash of the inputs and the feature config, written into a
temporary folder and renamed into place only when complete: a killed run leaves nothing a
later run would use.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa

from ctr.atomic import DISK_FULL
from ctr.datasets.cache import (DONE, KEY_FILE, cache_key, hold, key_blob, key_inputs, locked, make_leased,
                                temporary_name, utf8_cache_root)
from ctr.datasets.encode import Encoder, Tally
from ctr.datasets.fit import Fitter
from ctr.datasets.progress import RowProgress, shows_bars
from ctr.datasets.report import build_report
from ctr.datasets.shards import ShardWriter
from ctr.datasets.source import SPLITS, DatasetSource, default_features, resolve_features
from ctr.datasets.validate import check_rows, column_keys, raise_or_count, readable_columns, require_columns
from ctr.errors import DataError, RecipeError
from ctr.recipe import DataConfig
from ctr.registry import DATASETS
from ctr.schema import FeatureInfo, FeatureSpec, Schema

log = logging.getLogger(__name__)
KEYS = "keys"  # the folder, beside the encoded rows to score, of the keys of rows a source builds
PREDICT_COLUMNS = ("row", "score", "label")  # what ctr predict writes of its own beside those keys
# a rename's failures where something is at its target's name (a folder that is not empty, a file)
TAKEN = (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR)


@dataclass
class Prepared:
    """An encoded dataset in the cache: shards per split, the schema, the report."""

    root: Path
    schema: Schema
    report: dict

    def split_dir(self, split: str) -> Path:
        return self.root / split


def prepare(config: DataConfig, progress: bool | None = None) -> Prepared:
    """Encodes the recipe's data (or finds it in the cache) and returns the cache entry.

    The entry is keyed by what changes the encoding only (``key_inputs``): the training seed
    is not part of it, so every seed of a multi-seed run reads the same entry."""
    config = resolve_features(config)
    source = DATASETS.get(config.dataset, "data.dataset").target(config)
    features = config.features or default_features(source)
    label, group = config.label or source.label, config.group or source.group
    table_of = tables_of(features)
    inputs = key_inputs(source, features, label, group, config.split)
    root = utf8_cache_root(config.cache_dir) / f"{config.dataset}-{cache_key(inputs)[:16]}"
    if hold(root):  # held while this process runs: `ctr data clean` keeps it
        return load_prepared(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / temporary_name(root.name)
    try:
        make_leased(tmp)  # held from the start: a clean on another host cannot see this process run
        job = _Job(source, features, table_of, label, group, config, shows_bars(progress))
        job.run(tmp)
        (tmp / KEY_FILE).write_text(key_blob(inputs) + "\n")
        (tmp / DONE).write_text("ok\n")
        _publish(tmp, root)
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        raise DataError(f"data.cache_dir: {root.parent}: {os.strerror(err.errno).lower()} for the encoded data; free "
                        "space there or set data.cache_dir to a folder on a larger disk") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    hold(root)  # an entry another process published meanwhile is kept: held too
    return load_prepared(root)


@dataclass
class Encoded:
    """Rows encoded with a saved schema: ``root/test`` holds them; ``tally`` counts rows and
    out-of-vocabulary ids; ``labelled`` is False when the rows had no label column;
    ``skipped_rows`` (int64, ascending) are the input rows left out, numbered from 0 over the
    source's rows in read order (encoding every row only): those ``on_bad_rows: skip`` dropped
    and those the source has no label for (``DatasetSource.left_out_rows``); ``numbered`` is
    True when rows may be left out so (the scores then give their input rows); ``keys``, when
    the source builds its rows (``DatasetSource.score_keys``), is the folder of their keys:
    shards of one row per encoded row, in the same order."""

    prepared: Prepared
    tally: Tally
    labelled: bool
    skipped_rows: np.ndarray
    numbered: bool
    keys: Path | None = None

    def input_rows(self, first: int, count: int) -> np.ndarray:
        """The input row numbers of encoded rows ``first .. first + count - 1`` (int64 [count])."""
        return kept_rows(np.arange(first, first + count, dtype=np.int64), self.skipped_rows)


def kept_rows(kept: np.ndarray, skipped: np.ndarray) -> np.ndarray:
    """The row numbers of the ``kept``-th rows (int64 [K]) left once rows ``skipped`` (int64,
    ascending) are left out: the k-th kept row is row k + (skipped rows before it)."""
    kept_before_skip = skipped - np.arange(len(skipped), dtype=np.int64)
    return kept + np.searchsorted(kept_before_skip, kept, side="right")


def encode_with_schema(config: DataConfig, schema_dir: Path, out: Path, split: str | None,
                       progress: bool | None = None) -> Encoded:
    """Encodes raw rows with a run's saved schema and vocabularies (nothing is fitted) into
    ``out/<split>``: the rows preparation assigned to ``split`` (same split seed, same order), or,
    when ``split`` is None, every row of the source into ``out/test``. A label or group
    column the rows lack is allowed then (labels read as 0); bad rows are errors (or
    skipped) as in preparation.
    """
    from ctr.datasets.saved import load_schema, saved_encoder

    source = DATASETS.get(config.dataset, "data.dataset").target(config)
    if split is None and source.generated:
        raise DataError(f"{config.path}: a {config.dataset} run's rows are generated, not read from a file; score "
                        "files with a run of a dataset read from files (criteo, avazu, csv, parquet, ...)")
    schema = load_schema(schema_dir)
    features = [info.spec for info in schema.features]
    if split is None:  # a group column that a feature reads is that feature's input: never optional
        read = {spec.column for spec in features}
        source.optional_columns = frozenset(c for c in (schema.label, schema.group) if c and c not in read)
        source.scored_features = features
    job = _Job(source, features, {}, schema.label, schema.group, config, shows_bars(progress))
    job.whole = split is None
    absent = job.absent_columns() if job.whole else set()
    group = None if schema.group in absent else schema.group
    encoder = saved_encoder(schema_dir, schema, group)
    target = split or "test"
    keys = _checked_keys(source.score_keys, config.dataset) if job.whole else {}
    tally, writer, key_writer = Tally(), ShardWriter(out / target), ShardWriter(out / KEYS) if keys else None
    try:
        for name, batch, where in job.rows("encoding", only=target, absent=absent):
            labels = batch.column(schema.label).to_numpy(zero_copy_only=False)
            writer.write(encoder.encode(batch, labels, tally, where))
            if key_writer is not None:
                key_writer.write(_key_batch(batch, keys, config.dataset))
    finally:
        writer.close()
        if key_writer is not None:
            key_writer.close()
    if tally.rows == 0:
        raise DataError(f"{config.path}: no rows to encode (it holds none, or every one was skipped as bad)"
                        if job.whole else f"data: no rows to encode from dataset {config.dataset!r}")
    schema = Schema(schema.features, schema.label, group, schema.counts)
    skipped_rows = np.concatenate(job.skipped_rows) if job.skipped_rows else np.zeros(0, dtype=np.int64)
    left_out = source.left_out_rows() if job.whole else None
    if left_out is not None:  # the job numbered the rows the source kept
        skipped_rows = np.union1d(left_out, kept_rows(skipped_rows, left_out)).astype(np.int64)
    numbered = job.whole and not keys and (config.on_bad_rows == "skip" or left_out is not None)  # keys name rows
    return Encoded(Prepared(out, schema, {}), tally, schema.label not in absent, skipped_rows, numbered,
                   out / KEYS if keys else None)


def _checked_keys(keys: dict[str, str], dataset: str) -> dict[str, str]:
    """A source's ``score_keys``; a DataError for an output name predict writes itself."""
    clash = next((name for name in keys if name in PREDICT_COLUMNS), None)
    if clash is not None:
        raise DataError(f"data.dataset: {dataset}'s score_keys names an output column {clash!r}, which predict "
                        f"writes itself ({', '.join(PREDICT_COLUMNS)}); name it otherwise")
    return keys


def _key_batch(batch: pa.RecordBatch, keys: dict[str, str], dataset: str) -> pa.RecordBatch:
    """The ``keys`` columns of ``batch`` [B rows] under their output names [B rows]; a
    DataError naming a column the rows lack."""
    absent = next(((name, column) for name, column in keys.items() if column not in batch.schema.names), None)
    if absent is not None:
        raise DataError(f"data.dataset: {dataset}'s score_keys names column {absent[1]!r} (output {absent[0]}), "
                        f"which its rows lack (they have: {', '.join(batch.schema.names)})")
    return pa.RecordBatch.from_arrays([batch.column(column) for column in keys.values()], list(keys))


def load_prepared(root: Path) -> Prepared:
    report = json.loads((root / "report.json").read_text())
    return Prepared(root=root, schema=Schema.load(root), report=report)


def tables_of(features: list[FeatureSpec]) -> dict[str, str]:
    """Feature name → table (vocabulary) name; ``share_with`` points at the owner (a RecipeError
    on a numeric feature)."""
    by_name = {}
    for i, spec in enumerate(features):
        if spec.name in by_name:
            raise RecipeError(f"data.features[{i}].name: duplicate feature {spec.name!r}")
        by_name[spec.name] = spec
    tables = {}
    for i, spec in enumerate(features):
        if not spec.is_sparse:
            if spec.share_with:
                raise RecipeError(f"data.features[{i}].share_with: {spec.name!r} is a numeric feature, which has no "
                                  "vocabulary or table to share; leave share_with out")
            continue
        owner = spec.share_with or spec.name
        target = by_name.get(owner)
        if target is None or not target.is_sparse or target.share_with:
            raise RecipeError(
                f"data.features[{i}].share_with: {owner!r} is not a categorical or sequence feature that owns a table"
            )
        if spec.kind == "sequence" and target.num_ids:
            raise RecipeError(f"data.features[{i}].share_with: sequences cannot share {owner!r}, a num_ids table")
        tables[spec.name] = owner
    return tables


def _require_same_optional(batch: pa.RecordBatch, optional: frozenset[str], absent: set[str], file: str) -> None:
    """Refuses rows to score that hold an optional column (label, group) the first file
    lacks, or lack one it holds: the files of one input agree on them."""
    for column in sorted(optional):
        held = column in batch.schema.names
        if held == (column in absent):
            raise DataError(f"{file}: {'holds' if held else 'lacks'} column {column!r}, unlike the input's first file "
                            "(score files that agree on the label and group columns)")


def _publish(tmp: Path, root: Path) -> None:
    """Renames the finished entry ``tmp`` to ``root``; one another process published there
    meanwhile is kept, an unfinished folder or a stray file at that name replaced under its lock
    (``locked``): a clean removing that folder is done first, and then finds this entry in its
    place, which it leaves. Where nothing is at that name (a clean renamed the folder away after
    the rename failed, or while this waited for the lock), the rename is tried again. Nothing is
    removed unlocked but a stray file, or a folder on a file system without locks."""
    while True:
        try:
            os.rename(tmp, root)
            return
        except OSError as err:
            if err.errno not in TAKEN:
                raise
        with locked(root, fcntl.LOCK_EX) as there:
            if (root / DONE).exists():
                return
            if there:
                _remove(root)
                os.rename(tmp, root)
                return


def _remove(path: Path) -> None:
    """Removes the unfinished folder (or the stray file) at ``path``."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class _Job:
    """One preprocessing run (fit pass, then encode pass)."""

    def __init__(self, source, features, table_of, label, group, config: DataConfig, progress: bool):
        self.source, self.features, self.table_of = source, features, table_of
        self.label, self.group, self.config, self.seed = label, group, config, config.split.seed
        self.progress = progress
        self.skipped = {s: 0 for s in SPLITS}
        self.columns = column_keys(features, label, group)
        self.whole = False  # every row is a test row (no split)
        self.skipped_rows: list[np.ndarray] = []  # of every row (whole): the numbers of those skipped

    def absent_columns(self) -> set[str]:
        """The optional columns (label, group) the source's first record batch lacks (none
        when no stream holds a row: an Amazon history file whose users are too short to
        train on has test rows only)."""
        for name, stream in self._streams().items():
            for batch in self._batches(name, stream):
                return {c for c in self.source.optional_columns if c not in batch.schema.names}
        return set()

    def _streams(self) -> dict[str, Callable[[], Iterable[Any]]]:
        """The source's streams, checked: ``{"all": ...}`` or some of ``train``, ``valid``,
        ``test``, each a function (a plugin's other split name failed in the split
        assignment, a bare function where the names are read)."""
        streams = self.source.streams()
        names = list(streams) if isinstance(streams, dict) else None
        if names and (names == ["all"] or set(names) <= set(SPLITS)) and all(map(callable, streams.values())):
            return streams
        got = type(streams).__name__ if names is None else f"keys {', '.join(map(repr, names))}" if names else "{}"
        raise DataError(f"data.dataset: {self.config.dataset}'s streams() returned {got}; a source returns "
                        "{'all': stream} or {'train': stream, 'valid': ..., 'test': ...} (a stream: a function "
                        "yielding record batches)")

    def _batches(self, name: str, stream: Callable[[], Iterable[Any]]) -> Iterator[pa.RecordBatch | pa.Table]:
        """The record batches (or tables) of stream ``name``; anything else is a DataError
        (a plugin's stream yielding a pandas DataFrame failed deep in the checks)."""
        for batch in stream():
            if not isinstance(batch, (pa.RecordBatch, pa.Table)):
                raise DataError(f"data.dataset: {self.config.dataset}'s {name!r} stream yielded a {type(batch).__name__};"
                                " a stream yields pyarrow record batches (pa.RecordBatch.from_pandas converts a DataFrame)")
            yield batch

    def run(self, out: Path) -> None:
        fitter = Fitter(self.features, self.table_of, self.seed)
        for split, batch, where in self.rows("fitting vocabularies", only="train"):
            fitter.add(batch, where)
        vocabs, numeric = fitter.vocabularies(), fitter.numeric_stats()
        encoder = Encoder(self.features, self.table_of, vocabs, numeric, self.group)
        self.skipped = {s: 0 for s in SPLITS}
        tallies = {s: Tally() for s in SPLITS}
        writers = {s: ShardWriter(out / s) for s in SPLITS}
        try:
            for split, batch, where in self.rows("encoding"):
                labels = batch.column(self.label).to_numpy(zero_copy_only=False)
                writers[split].write(encoder.encode(batch, labels, tallies[split], where))
            for writer in writers.values():
                writer.close()
        except OSError:  # a full disk: each writer's file is cut, and the folder is removed
            for writer in writers.values():
                writer.abandon()
            raise
        if tallies["train"].rows == 0:
            skipped = self.skipped["train"]
            raise DataError(f"data: no training rows: the {skipped:,} read were skipped as bad (data.on_bad_rows: skip; "
                            "on_bad_rows: error names the first)" if skipped else
                            f"data: no training rows were read from dataset {self.config.dataset!r}")
        schema = self._schema(vocabs, numeric)
        schema.save(out)
        for table, vocab in vocabs.items():
            _write_parquet(vocab.to_table(), out / "vocab" / f"{table}.parquet")
        report = build_report(schema, tallies, self.skipped)
        (out / "report.json").write_text(json.dumps(report, indent=1))

    def _schema(self, vocabs, numeric) -> Schema:
        infos = []
        for spec in self.features:
            if spec.is_sparse:
                table = self.table_of[spec.name]
                infos.append(FeatureInfo(spec=spec, vocab_size=vocabs[table].size, table=table))
            else:
                infos.append(FeatureInfo(spec=spec, numeric=numeric[spec.name]))
        counts = {table: vocab.counts_by_id() for table, vocab in vocabs.items()}
        return Schema(features=infos, label=self.label, group=self.group, counts=counts)

    def rows(self, what: str, only: str | None = None,
             absent: set[str] = frozenset()) -> Iterator[tuple[str, pa.RecordBatch, str]]:
        """Checked record batches as (split, batch, origin), labels parsed to floats; the
        ``absent`` label or group column is added (label 0, group empty)."""
        bar = RowProgress(f"data: {what}", self.progress)
        skip = self.config.on_bad_rows == "skip"
        streams = self._streams()
        carved = {split for split in ("valid", "test") if split not in streams}
        read, checked = 0, None
        for name, stream in streams.items():
            feeds_only = name in ("all", only) or (name == "train" and only in carved)  # carved from training rows
            if only is not None and not self.whole and not feeds_only:
                continue
            for index, batch in enumerate(self._batches(name, stream)):
                origin = f"{self.config.dataset} ({name} rows, batch {index})"
                file = (batch.schema.metadata or {}).get(b"file", b"").decode() or origin
                _require_same_optional(batch, self.source.optional_columns, absent, file)
                for column in absent:
                    batch = batch.append_column(column, pa.array(["0" if column == self.label else ""] * batch.num_rows))
                if checked is None or not batch.schema.equals(checked):  # the first batch, and one of other columns
                    self._check_columns(batch.schema, name, file, origin)
                    checked = batch.schema
                check = check_rows(batch, self.features, self.label)
                dropped = raise_or_count(check, batch, origin, skip)
                batch = batch.set_column(
                    batch.schema.get_field_index(self.label), self.label, pa.array(check.labels)
                )
                if self.whole and dropped:
                    self.skipped_rows.append(read + np.flatnonzero(~check.keep))
                read += batch.num_rows
                codes = self._assign(name, index, batch.num_rows, carved)
                bar.update(batch.num_rows)
                for code, split in enumerate(SPLITS):
                    in_split = codes == code
                    if dropped:
                        self.skipped[split] += int((in_split & ~check.keep).sum())
                    if only in (None, split) and in_split.any():
                        yield split, batch.filter(pa.array(in_split & check.keep)), origin
        bar.close()

    def _check_columns(self, schema: pa.Schema, name: str, file: str, origin: str) -> None:
        """Refuses a batch of stream ``name`` that lacks a column the features, the label or the
        group read, or holds one of a type its reader cannot convert (a list or struct column
        of a plugin failed in pyarrow's cast)."""
        require_columns(schema.names, self.columns, file)
        stream = f"{self.config.dataset}'s {name!r} stream" + (f" ({file})" if file != origin else "")
        readable_columns(schema, self.features, self.label, self.group, f"data.dataset: {stream}")

    def _assign(self, name: str, index: int, rows: int, carved: set[str]) -> np.ndarray:
        """Split code (index into SPLITS) of each row.

        An ``all`` stream is split at random (seeded) by ``data.split``; a ``train`` stream
        gives the ``carved`` splits (those without a stream of their own: no ``valid_path``
        or no ``test_path``) their ``data.split`` fraction of its rows.
        """
        if self.whole:
            return np.full(rows, SPLITS.index("test"))
        if name != "all" and not (name == "train" and carved):
            return np.full(rows, SPLITS.index(name))
        u = np.random.default_rng([self.seed, 7, index]).random(rows)
        valid = self.config.split.valid if "valid" in carved else 0.0
        test = self.config.split.test if "test" in carved else 0.0
        return np.where(u < valid, 1, np.where(u < valid + test, 2, 0))


def _write_parquet(table: pa.Table, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
