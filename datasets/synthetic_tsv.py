"""``ctr data synth``: synthetic rows written as raw Criteo DAC TSV (for benchmarks and tests).

The rows come from the ``synthetic`` dataset's planted model (Criteo-like vocabulary sizes,
Zipf id frequencies, missing counts); categorical ids are written as 8-digit hex tokens like
Criteo's hashed values, missing counts as empty fields. The file is written to a temporary
name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from ctr.datasets.criteo import CATEGORICAL, NUMERIC
from ctr.datasets.progress import RowProgress
from ctr.datasets.source import GZ, OTHER_COMPRESSED
from ctr.datasets.synthetic import NUM_CATEGORICAL, NUM_NUMERIC, PlantedModel, SyntheticConfig
from ctr.atomic import atomic_path
from ctr.errors import UserError, reason

MIN_ROW_BYTES = NUM_CATEGORICAL * 8 + NUM_CATEGORICAL + NUM_NUMERIC + 1
DEFLATE_MAX_RATIO = 1032  # gzip writes at least one byte per 1032 of its input


def hex_tokens(column: int, vocab: int) -> pa.Array:
    """The 8-hex-digit token of every id of a column (a fixed, column-specific scramble)."""
    ids = np.arange(vocab, dtype=np.uint64)
    scrambled = (ids * np.uint64(2654435761) + np.uint64(column * 97_531 + 12_345)) & np.uint64(0xFFFFFFFF)
    return pa.array(np.char.mod("%08x", scrambled.astype(np.uint32)))


def write_dac_tsv(path: Path, config: SyntheticConfig, progress: bool = False) -> int:
    """Writes ``config.rows`` rows to ``path`` as DAC TSV; returns the rows written. Progress:
    a bar when ``progress``, else a line every ``PROGRESS_LOG_SECONDS``."""
    path = Path(path)
    check_name(path)
    if path.parent and not path.parent.is_dir():
        raise UserError(f"{path.parent}: {'not a folder' if path.parent.exists() else 'no such folder'}")
    _check_disk(path, config.rows)
    model = PlantedModel(config)
    tokens = [hex_tokens(j, v) for j, v in enumerate(model.vocabs)]
    bar = RowProgress("data synth", progress, verb="written", total=config.rows)
    try:
        with atomic_path(path) as tmp, _writer(tmp, path) as writer:
            for chunk, start in enumerate(range(0, config.rows, config.chunk_rows)):
                n = min(config.chunk_rows, config.rows - start)
                ids, counts, labels = model.sample(np.random.default_rng([config.seed, 1, chunk]), n)
                writer.write_batch(_batch(ids, counts, labels, tokens))
                bar.update(n)
    finally:
        bar.close()
    return config.rows


def check_name(path: Path) -> None:
    """Refuses a ``path`` named as compressed data other than gzip (``day.tsv.bz2``): the
    plain text written under it would be refused by that format's tools (``bzcat``)."""
    if path.suffix.lower() in OTHER_COMPRESSED:
        plain = path.with_suffix("").name
        raise UserError(f"{path}: synthetic rows are written plain or gzip-compressed (*.gz); name it {plain} or "
                        f"{plain}.gz")


def _gzipped(path: Path) -> bool:
    """Whether the rows go to ``path`` gzip-compressed: a ``*.gz`` name, in any case (``day_0.GZ``)."""
    return path.suffix.lower() == GZ


def _check_disk(path: Path, rows: int) -> None:
    """Refuses rows whose TSV cannot fit in the free space of ``path``'s folder (a row takes
    at least ``MIN_ROW_BYTES``: 26 tokens of 8 hex digits and 39 tabs, gzip's most compressed
    share of that in a ``*.gz``); a file system that tells no size (``/proc``) is left to
    refuse the write itself."""
    row_bytes = MIN_ROW_BYTES / DEFLATE_MAX_RATIO if _gzipped(path) else MIN_ROW_BYTES
    usage, needed = shutil.disk_usage(path.parent), rows * row_bytes
    if usage.total and needed > usage.free:
        raise UserError(f"--rows: {rows:,} rows take at least {needed / 1e9:.3g} GB, more than the "
                        f"{usage.free / 1e9:.3g} GB free in {path.parent}")


@contextlib.contextmanager
def _writer(tmp: Path, path: Path) -> Iterator[pacsv.CSVWriter]:
    """A DAC TSV writer at ``tmp``, gzip-compressed when ``path`` is named ``*.gz`` (as the
    Criteo Terabyte release's ``day_0.gz``); a UserError naming ``path`` when no file can be
    created there."""
    options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    try:
        sink = pa.CompressedOutputStream(str(tmp), "gzip") if _gzipped(path) else pa.OSFile(str(tmp), "wb")
        writer = pacsv.CSVWriter(sink, _schema(), write_options=options)
    except OSError as err:  # pyarrow's, which names no file
        raise UserError(f"{path}: cannot be written ({reason(err)})") from None
    with sink, writer:
        yield writer


def _schema() -> pa.Schema:
    fields = [pa.field("label", pa.int8())]
    fields += [pa.field(name, pa.int64()) for name in NUMERIC]
    fields += [pa.field(name, pa.string()) for name in CATEGORICAL]
    return pa.schema(fields)


def _batch(ids: np.ndarray, counts: np.ndarray, labels: np.ndarray, tokens: list[pa.Array]) -> pa.RecordBatch:
    columns = [pa.array(labels.astype(np.int8))]
    for j in range(NUM_NUMERIC):
        values = counts[:, j]
        columns.append(pa.array(np.nan_to_num(values).astype(np.int64), mask=np.isnan(values)))
    for j in range(NUM_CATEGORICAL):
        columns.append(tokens[j].take(pa.array(ids[:, j])))
    return pa.RecordBatch.from_arrays(columns, schema=_schema())
