"""Datasets read from files of rows: the base of file readers, and the generic ``csv`` and
``parquet`` datasets whose columns the recipe's feature specs describe.

A file dataset reads ``data.path`` (a file, or every matching file of a folder) as one
stream that preprocessing splits at random by ``data.split``; with ``valid_path`` and/or
``test_path`` those files are the validation and test rows instead (without ``valid_path``
the validation rows are carved from the training files).
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ctr.datasets.source import DatasetSource, RowStream, resolve_files
from ctr.datasets.text import (EmptyFileError, TextFormat, field_count, first_line, first_line_number, header_line,
                               read_delimited, strip_types)
from ctr.datasets.validate import LINE_COLUMN, column_keys, readable_columns, require_columns
from ctr.errors import DataError, RecipeError, reason
from ctr.recipe import DataConfig
from ctr.registry import DATASETS
from ctr.schema import FeatureSpec

log = logging.getLogger(__name__)
PARQUET_BATCH_ROWS = 65_536
UNNAMED_INDEX = re.compile(r"__index_level_\d+__")  # the column name pandas gives an index without one


@dataclass
class FileConfig(DataConfig):
    """Options shared by file datasets.

    Args:
        valid_path: validation rows (a file or folder); default: carved from ``path``.
        test_path: test rows (a file or folder); default: split from ``path``.
    """

    valid_path: str | None = None
    test_path: str | None = None


class FileSource(DatasetSource):
    """A dataset of files; subclasses read one file into record batches (``read_file``).

    Every batch carries the file name (metadata ``file``) and a ``__line__`` column so that
    errors name the file and line; empty files are errors (or, with ``on_bad_rows: skip``,
    skipped with a warning).
    """

    pattern = "*"
    carves = True  # one "all" stream, or the held-out splits without a file carved from the train stream

    def __init__(self, config: FileConfig):
        super().__init__(config)
        self.split_files = {"train": resolve_files(config.path, "data.path", self.pattern)}
        for split in ("valid", "test"):
            path = getattr(config, f"{split}_path")
            if path:
                self.split_files[split] = resolve_files(path, f"data.{split}_path", self.pattern)
                _refuse_trained_on(config.path, self.split_files["train"], self.split_files[split], split)
        self._skipped: set[Path] = set()  # the empty files skipped (each warned of once, not at each pass)

    def files(self) -> list[Path]:
        return [f for files in self.split_files.values() for f in files]

    def fingerprint(self) -> dict[str, Any]:
        """The source's key with a path key naming a folder of one file read (``rows/``, whose
        one matching file is ``rows/train.csv``) as naming that file: the same rows, one entry."""
        key = super().fingerprint()
        for split, files in self.split_files.items():
            name = "path" if split == "train" else f"{split}_path"
            if len(files) == 1 and key["options"].get(name):
                key["options"][name] = str(files[0].resolve())
        return key

    def split_keys(self) -> tuple[str, ...]:
        """The fractions of the splits carved from the training rows (those without a file of
        their own), and the seed when one of them is above 0: none with both held-out files."""
        carved = tuple(split for split in ("valid", "test") if split not in self.split_files)
        drawn = any(getattr(self.config.split, split) > 0 for split in carved)
        return (*carved, "seed") if drawn else carved

    def split_keys_of(self, split: str) -> tuple[str, ...]:
        """None for a held-out split read from a file of its own; the carved ones' as
        ``DatasetSource`` says."""
        return () if split != "train" and split in self.split_files else super().split_keys_of(split)

    def streams(self) -> dict[str, RowStream]:
        if len(self.split_files) == 1:
            return {"all": lambda: self._read(self.split_files["train"])}
        return {split: (lambda files=files: self._read(files)) for split, files in self.split_files.items()}

    def needed_columns(self) -> dict[str, str]:
        """Raw columns the features, the label and the group read → the recipe key naming each."""
        features = self.config.features or self.default_features()
        return column_keys(features, self.config.label or self.label, self.config.group or self.group)

    def required(self, needed: dict[str, str]) -> dict[str, str]:
        """``needed`` without the columns that may be absent (``optional_columns``)."""
        return {column: key for column, key in needed.items() if column not in self.optional_columns}

    def read_file(self, file: Path) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    def _read(self, files: list[Path]) -> Iterator[pa.RecordBatch]:
        for file in files:
            try:
                yield from self.read_file(file)
            except EmptyFileError as err:
                if self.config.on_bad_rows != "skip":
                    raise
                if file not in self._skipped:
                    log.warning("skipping %s", err)
                self._skipped.add(file)


def _refuse_trained_on(path: str | None, train: list[Path], held_out: list[Path], split: str) -> None:
    """A DataError when a file of the ``split`` rows (``valid`` or ``test``) is among the
    training files (those of ``data.path``, ``path``): its rows would be trained on and then
    scored as held out."""
    trained = {file.resolve() for file in train}
    both = next((file for file in held_out if file.resolve() in trained), None)
    if both is not None:
        folder = Path(str(path)).expanduser()
        advice = (f"move it out of the data.path folder {folder}" if folder.is_dir() else
                  f"name another file, or leave data.{split}_path out to split data.path's rows")
        raise DataError(f"data.{split}_path: {both} is read by data.path too (its rows would be trained on and "
                        f"{'validated' if split == 'valid' else 'tested'} on); {advice}")


class DelimitedSource(FileSource):
    """A file source of delimited text; subclasses give each file's ``text_format``."""

    def text_format(self, file: Path) -> TextFormat:
        raise NotImplementedError

    def finish(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Hook for derived columns; the default returns the batch unchanged."""
        return batch

    def read_file(self, file: Path) -> Iterator[pa.RecordBatch]:
        fmt = self.text_format(file)
        for batch in read_delimited(file, fmt):
            yield self.finish(batch)

    def header(self, file: Path, delimiter: str, quoting: bool = True) -> list[str]:
        """Column names from the first line (RecBole type suffixes dropped); with ``quoting``
        a quoted name may hold the delimiter or a doubled quote (``"city, state"``), as pandas
        writes them."""
        line = header_line(file)
        if line is None:
            raise EmptyFileError(f"{file}: empty file (no header)")
        if quoting and '"' in line:
            names = [name.strip() for name in next(csv.reader([line], delimiter=delimiter, skipinitialspace=True))]
        else:
            names = [name.strip().strip('"') for name in line.split(delimiter)]
        return strip_types(names)


@dataclass
class CsvConfig(FileConfig):
    """Options of the generic ``csv`` dataset.

    Args:
        delimiter: field separator (``"\\t"`` for TSV).
        header: the first line names the columns.
        columns: column names, for files without a header; ``auto`` (or unset): the header's.
        quoting: fields may be quoted with ``"``.
    """

    delimiter: str = ","
    header: bool = True
    columns: list[str] | Literal["auto"] | None = None
    quoting: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.delimiter) != 1:
            raise ValueError("delimiter must be one character")
        if not self.header and not isinstance(self.columns, list):
            raise ValueError("a file without a header needs its column names in columns")

    @property
    def names(self) -> list[str] | None:
        """The column names the recipe gives (None: read them from the header)."""
        return self.columns if isinstance(self.columns, list) else None


def _features_required(dataset: str) -> NoReturn:
    raise RecipeError(f"data.features: the {dataset} dataset has no default features; list them (name, kind, source)")


@DATASETS.register("csv", config=CsvConfig)
class CsvDataset(DelimitedSource):
    """Delimited text files (CSV, TSV) whose columns the recipe's features describe."""

    def default_features(self) -> list[FeatureSpec]:
        _features_required("csv")

    def fingerprint(self) -> dict[str, Any]:
        """The source's key with ``columns`` as left out where the header names the columns so
        (``auto``, or the header's own names in every file): the same rows read, one entry."""
        key = super().fingerprint()
        if self._named_by_header():
            key["options"]["columns"] = None
        return key

    def _named_by_header(self) -> bool:
        """Whether each file's header names the columns as ``data.columns`` does; a file whose
        header cannot be read (empty, say) names none."""
        config: CsvConfig = self.config  # type: ignore[assignment]
        if not config.header or config.names is None:
            return config.header
        try:
            return all(self.header(file, config.delimiter, config.quoting) == config.names for file in self.files())
        except DataError:
            return False

    def columns(self) -> list[str]:
        config: CsvConfig = self.config  # type: ignore[assignment]
        return config.names or self.header(self.split_files["train"][0], config.delimiter, config.quoting)

    def text_format(self, file: Path) -> TextFormat:
        config: CsvConfig = self.config  # type: ignore[assignment]
        columns = config.names or self.header(file, config.delimiter, config.quoting)
        if config.header and config.names and len(config.names) != len(self.header(file, config.delimiter, config.quoting)):
            raise DataError(f"{file}:{first_line_number(file)}: the header has a different number of fields than data.columns")
        if not config.header and self.optional_columns:
            columns = self._scored_columns(file, columns)
        needed = self.needed_columns()
        require_columns(columns, self.required(needed), str(file))
        return TextFormat(columns, config.delimiter, config.header, config.quoting, keep=[c for c in columns if c in needed])

    def _scored_columns(self, file: Path, columns: list[str]) -> list[str]:
        """``data.columns`` of a headerless file to score, less the label (and the group) its
        rows lack, as the first line's field count tells."""
        config: CsvConfig = self.config  # type: ignore[assignment]
        fields = field_count(first_line(file) or "", config.delimiter, config.quoting)
        label, group = self.config.label or self.label, self.config.group or self.group
        for absent in ({label}, {label, group} if group in self.optional_columns else {label}):
            kept = [c for c in columns if c not in absent]
            if fields == len(kept) < len(columns):
                log.warning("%s: %d fields a line where data.columns names %d: read as rows without %s, columns %s",
                            file, fields, len(columns), " and ".join(sorted(absent)), ", ".join(kept))
                return kept
        return columns


@dataclass
class ParquetConfig(FileConfig):
    """Options of the generic ``parquet`` dataset (``valid_path``, ``test_path``)."""


@DATASETS.register("parquet", config=ParquetConfig)
class ParquetDataset(FileSource):
    """Parquet files whose columns the recipe's features describe (numbers, strings, lists)."""

    pattern = "*.parquet"

    def default_features(self) -> list[FeatureSpec]:
        _features_required("parquet")

    def columns(self) -> list[str]:
        return self._open(self.split_files["train"][0]).schema_arrow.names

    def index_columns(self) -> list[str]:
        """The unnamed index columns ``DataFrame.to_parquet`` stored (``__index_level_0__``),
        as its schema's pandas metadata names them (a RangeIndex is stored as metadata only;
        a named index, ``set_index("user_id")``, is a column of the data like any other)."""
        metadata = self._open(self.split_files["train"][0]).schema_arrow.pandas_metadata or {}
        return [name for name in metadata.get("index_columns", [])
                if isinstance(name, str) and UNNAMED_INDEX.fullmatch(name)]

    @staticmethod
    def _open(file: Path) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(file)
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{file}: not a readable parquet file: {err}") from None

    def read_file(self, file: Path) -> Iterator[pa.RecordBatch]:
        reader = self._open(file)
        if reader.metadata.num_rows == 0:
            raise EmptyFileError(f"{file}: empty file (no rows)")
        needed = self.needed_columns()
        require_columns(reader.schema_arrow.names, self.required(needed), str(file))
        columns = [c for c in reader.schema_arrow.names if c in needed]
        readers = self._readers(reader.schema_arrow, file)
        binary = [c for c in columns if _holds_bytes(reader.schema_arrow.field(c).type)]
        first = 1
        for batch in _batches(reader, columns, file):
            if binary:
                batch = _as_text(batch, binary, readers, file, first)
            rows = np.arange(first, first + batch.num_rows, dtype=np.int64)
            batch = batch.append_column(LINE_COLUMN, pa.array(rows))
            first += batch.num_rows
            yield batch.replace_schema_metadata({"file": str(file), "unit": "row"})

    def _readers(self, schema: pa.Schema, file: Path) -> dict[str, str]:
        """Column → who reads it, for the columns of ``schema`` that the features, the label and
        the group read (``readable_columns``: a type its reader cannot convert is a DataError)."""
        features = self.config.features or self.default_features()
        return readable_columns(schema, features, self.config.label or self.label, self.config.group or self.group,
                                str(file))


def _batches(reader: pq.ParquetFile, columns: list[str], file: Path) -> Iterator[pa.RecordBatch]:
    """The record batches of ``columns``; a damaged page is a DataError naming its row group."""
    try:
        yield from reader.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns)
    except (OSError, pa.ArrowException) as err:
        where = _bad_row_group(reader, columns)
        raise DataError(f"{file}: corrupt parquet data in {where} ({reason(err, typed=True)})") from None


def _bad_row_group(reader: pq.ParquetFile, columns: list[str]) -> str:
    """``row group k of n, rows a-b`` of the first row group of ``reader`` that does not
    read (each read again, on the error path only)."""
    first, groups = 1, reader.metadata.num_row_groups
    for k in range(groups):
        rows = reader.metadata.row_group(k).num_rows
        try:
            reader.read_row_group(k, columns=columns)
        except (OSError, pa.ArrowException):
            return f"row group {k + 1} of {groups}, rows {first}-{first + rows - 1}"
        first += rows
    return "a row group"


def _holds_bytes(arrow_type: pa.DataType) -> bool:
    """A binary column (or a list of binary items): read as UTF-8 text."""
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        arrow_type = arrow_type.value_type
    return pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type) or pa.types.is_fixed_size_binary(arrow_type)


def _text_type(arrow_type: pa.DataType) -> pa.DataType:
    """The text type of a ``_holds_bytes`` type (``list<binary>`` → ``list<string>``)."""
    if pa.types.is_list(arrow_type):
        return pa.list_(_text_type(arrow_type.value_type))
    if pa.types.is_large_list(arrow_type):
        return pa.large_list(_text_type(arrow_type.value_type))
    return pa.large_string() if pa.types.is_large_binary(arrow_type) else pa.string()


def _as_text(batch: pa.RecordBatch, columns: list[str], readers: dict[str, str], file: Path,
             first: int) -> pa.RecordBatch:
    """``batch`` (rows ``first``, ... of ``file``) with its binary ``columns`` as UTF-8 text;
    bytes that are not UTF-8 are a DataError naming their row."""
    for name in columns:
        index = batch.schema.get_field_index(name)
        column = batch.column(index)
        try:
            text = column.cast(_text_type(column.type))
        except pa.ArrowInvalid:
            row = first + _first_not_utf8(column.to_pylist())
            raise DataError(f"{file} row {row}: column {name!r} ({column.type}) is not UTF-8 text, which "
                            f"{readers[name]} reads; store it as UTF-8 strings (binary ids hex-encoded)") from None
        batch = batch.set_column(index, name, text)
    return batch


def _first_not_utf8(values: list) -> int:
    """Index of the first value (bytes, or a list of bytes) that is not UTF-8."""
    for i, value in enumerate(values):
        try:
            for item in value if isinstance(value, list) else [value]:
                if item is not None:
                    item.decode("utf-8")
        except UnicodeDecodeError:
            return i
    return 0
