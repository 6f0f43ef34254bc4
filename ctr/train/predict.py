"""``ctr predict RUN INPUT --out OUT``: scores raw rows with a finished run's best checkpoint.

Rows are encoded with the run's saved schema and vocabularies (unknown ids → OOV ids; bad
rows are errors, or skipped with ``data.on_bad_rows: skip``, as in training), written as
encoded shards to a temporary folder and scored batch by batch, so memory does not grow
with the input. The output (parquet, or CSV for a ``.csv`` / ``.tsv`` name) has a ``score``
column (the click probability) per kept input row, in input order, and ``label`` when the
input has labels; with ``data.on_bad_rows: skip`` (and for a ``movielens`` input with
ratings, whose ratings of 3 have no label) a ``row`` column gives each score's input row
(numbered from 0 over the input's rows in read order), so scores join back to the input
though rows were left out; for rows a dataset builds from the input (``amazon``: targets and
sampled negatives of each history) its key columns (``score_keys``) come before ``score``. It
is written atomically. A mixed-precision run scores
under its training's autocast, as its evaluation does.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ctr.atomic import atomic_path
from ctr.datasets.loader import BatchLoader
from ctr.datasets.preprocess import Encoded
from ctr.datasets.progress import RowProgress, shows_bars
from ctr.datasets.shards import shard_files
from ctr.datasets.source import GZ, OTHER_COMPRESSED
from ctr.errors import UserError, reason, scoring_a_saved_run
from ctr.metrics import split_metrics
from ctr.recipe import DataConfig
from ctr.train.placement import placement, use_threads
from ctr.train.saved import encode_rows, finished_run, oov_counts, restored_task
from ctr.train.net import autocast, probabilities

CSV_SUFFIXES = (".csv", ".tsv")


@dataclass
class Scored:
    """One batch's logits float64 [B], labels [B] and groups [B] (or None)."""

    logits: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None


@scoring_a_saved_run()
def predict(run_root: Path, data: Path, out: Path) -> dict[str, Any]:
    """Scores every row of ``data`` into ``out``; returns rows, rows/s, the OOV counts and,
    when the rows have labels, AUC, logloss (and group AUC with a group column). Progress
    is shown as the run's training showed it (``shows_bars``)."""
    _check_format(out)
    if out.resolve() == data.resolve():
        raise UserError(f"{out}: is the input; write the scores to another file")
    if not data.is_file() and out.resolve().is_relative_to(data.resolve()):
        raise UserError(f"{out}: inside the input folder {data} (a later read of it would take the scores for rows); "
                        "choose another --out")
    run, recipe, ckpt = finished_run(run_root, out)
    _refuse_read_input(out, data, recipe.data)
    use_threads(recipe.trainer.num_threads)  # as in training: another thread count sums in another order
    progress = shows_bars(recipe.trainer.progress_bar)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ctr-predict-") as tmp:
        encoded = encode_rows(run, recipe, Path(tmp), data, progress=progress)
        schema = encoded.prepared.schema
        task = restored_task(run, recipe, schema, ckpt)
        device = placement(recipe).device
        net = task.net.to(device).eval()
        loader = BatchLoader(encoded.prepared.split_dir("test"), schema, recipe.train.eval_batch_size,
                             prefetch=recipe.data.prefetch, device=device)
        bar = RowProgress("predict: scoring", progress, verb="scored")
        try:
            scored = _scores(net, loader, device, recipe.trainer.precision, bar)
            parts = _write(scored, out, encoded.labelled, encoded if encoded.numbered else None, encoded.keys)
        finally:
            bar.close()
            loader.close()
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {"rows": encoded.tally.rows, "rows_per_s": encoded.tally.rows / seconds}
    if encoded.labelled:
        result.update(_metrics(parts))
    result["oov"] = oov_counts(encoded)
    return result


def _check_format(out: Path) -> None:
    """Refuses an ``out`` named as compressed CSV (``scores.csv.gz``): its last suffix is no
    CSV one, and parquet would be written under a name that says otherwise."""
    if out.suffix.lower() in (GZ, *OTHER_COMPRESSED) and out.with_suffix("").suffix.lower() in CSV_SUFFIXES:
        raise UserError(f"{out}: scores are written uncompressed, as CSV (.csv), TSV (.tsv) or parquet (another name); "
                        f"name it {out.with_suffix('').name}")


def _refuse_read_input(out: Path, data: Path, config: DataConfig) -> None:
    """Refuses an ``out`` that is one of the files read with the input ``data`` (an ``amazon``
    INPUT's attributes file beside it, a ``movielens`` INPUT's ``.user`` and ``.item`` files):
    the scores would replace it. An input that cannot be read is left to its encoding to name."""
    try:
        read = config.reading(data).input_paths()
    except UserError:
        return
    if any(path.resolve() == out.resolve() for path in read.values()):
        raise UserError(f"{out}: is read with the input {data}; choose another --out")


@torch.inference_mode()
def _scores(net: torch.nn.Module, loader: BatchLoader, device: torch.device, precision: str,
            bar: RowProgress) -> Iterator[Scored]:
    """The logits [B] of each batch of ``loader``, counted on ``bar``."""
    for batch in loader:
        batch = batch.to(device)
        with autocast(precision, device):
            logits = net(batch)[0].double()
        groups = None if batch.groups is None else batch.groups.cpu().numpy()
        bar.update(len(logits))
        yield Scored(logits.cpu().numpy(), batch.labels.cpu().numpy(), groups)


def _writer(path: Path, schema: pa.Schema, out: Path) -> _CsvWriter | pq.ParquetWriter:
    """A writer at ``path`` of ``out``'s format: CSV (tab-separated for a ``.tsv`` name) or
    parquet; a UserError naming ``out`` when no file can be created there."""
    suffix = out.suffix.lower()
    try:
        if suffix not in CSV_SUFFIXES:
            return pq.ParquetWriter(path, schema)
        return _CsvWriter(path, schema, delimiter="\t" if suffix == ".tsv" else ",")
    except OSError as err:  # pyarrow's, which names no file
        raise UserError(f"{out}: cannot be written ({reason(err)})") from None


PLAIN_KINDS = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_temporal,
               pa.types.is_decimal, pa.types.is_null)  # types whose text never needs quotes


class _CsvWriter:
    """A CSV (or TSV) score file: each value as pyarrow's CSV writer writes it (its cast to
    text), quoted (its quotes doubled, RFC 4180) only where it holds the delimiter, a quote or
    a line break; so is a header name. (pyarrow quotes every name and, once one value needs
    quotes, every string: ``"score"\t"label"``, ``"u1"``, quotes that ``cut`` and ``awk`` keep.)
    Each column is rendered and quoted as a whole and each batch's lines joined as one."""

    def __init__(self, path: Path, schema: pa.Schema, delimiter: str):
        self._delimiter = delimiter
        self._marks = f'[{delimiter}"\r\n]'  # the delimiter is ',' or a tab: literal in a class
        self._sink = pa.OSFile(str(path), "wb")
        try:
            header = delimiter.join(self._cell(name) for name in schema.names) + "\n"
            self._sink.write(header.encode())
        except BaseException:
            self._sink.close()
            raise

    def _cell(self, name: str) -> str:
        """``name`` as a header cell: quoted (its quotes doubled) only where it needs it."""
        return '"' + name.replace('"', '""') + '"' if re.search(self._marks, name) else name

    def _fields(self, column: pa.Array) -> pa.Array:
        """The CSV fields [B] (large_string; null for a null value) of ``column`` [B]."""
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        text = pc.cast(column, pa.large_string())
        if any(is_kind(column.type) for is_kind in PLAIN_KINDS):
            return text
        needs = pc.match_substring_regex(text, self._marks)
        if not pc.any(needs).as_py():
            return text
        doubled = pc.replace_substring(text, '"', '""')
        quoted = pc.binary_join_element_wise(_large('"'), doubled, _large('"'), _large(""))
        return pc.if_else(needs, quoted, text)

    def write_table(self, table: pa.Table) -> None:
        for batch in table.to_batches():
            fields = [self._fields(column) for column in batch.columns]
            lines = pc.binary_join_element_wise(*fields, _large(self._delimiter), null_handling="replace",
                                                null_replacement="")
            self._sink.write(_concatenated(pc.binary_join_element_wise(lines, _large(""), _large("\n"))))

    def close(self) -> None:
        self._sink.close()


def _large(text: str) -> pa.Scalar:
    return pa.scalar(text, pa.large_string())


def _concatenated(text: pa.Array) -> pa.Buffer:
    """The bytes of the values of ``text`` [N] (large_string, no nulls) one after another."""
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)[text.offset : text.offset + len(text) + 1]
    return text.buffers()[2][offsets[0] : offsets[-1]]


def _write(scored: Iterator[Scored], out: Path, labelled: bool, numbered: Encoded | None,
           keys: Path | None = None) -> list[Scored]:
    """Streams the scores into ``out`` (CSV or parquet by its suffix), after their input rows'
    numbers when ``numbered`` and the key columns of the rows a source built (the shards in
    ``keys``, a row per score): the click probabilities of the logits, float64; returns what
    the metrics need (labels and logits, a few bytes a row) when ``labelled``."""
    kept: list[Scored] = []
    written = 0
    built = None if keys is None else _KeyRows(keys)
    with atomic_path(out) as tmp:
        writer = None
        for part in scored:
            rows = len(part.logits)
            columns = {} if numbered is None else {"row": pa.array(numbered.input_rows(written, rows))}
            if built is not None:
                columns.update(zip(built.schema.names, built.take(rows).columns))
            written += rows
            columns["score"] = pa.array(probabilities(torch.from_numpy(part.logits)).numpy())
            if labelled:
                columns["label"] = pa.array(part.labels.astype(np.int8))
                kept.append(part)
            table = pa.table(columns)
            if writer is None:
                writer = _writer(tmp, table.schema, out)
            writer.write_table(table)
        if writer is not None:
            writer.close()
    return kept


class _KeyRows:
    """The rows of the key shards in ``folder``, handed out in order, ``count`` at a time
    (one row group read ahead at most)."""

    def __init__(self, folder: Path):
        files = shard_files(folder)
        self.schema = pq.read_schema(files[0])
        self._groups = (batch for file in files for batch in pq.ParquetFile(file).iter_batches())
        self._held = self.schema.empty_table()

    def take(self, count: int) -> pa.Table:
        """The next ``count`` rows."""
        parts = [self._held]
        held = self._held.num_rows
        while held < count:
            batch = next(self._groups)
            parts.append(pa.Table.from_batches([batch]))
            held += batch.num_rows
        rows = pa.concat_tables(parts)
        self._held = rows.slice(count)
        return rows.slice(0, count).combine_chunks()


def _metrics(parts: list[Scored]) -> dict[str, float]:
    logits = np.concatenate([p.logits for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    groups = None if parts[0].groups is None else np.concatenate([p.groups for p in parts])
    return split_metrics(labels, logits, groups)
