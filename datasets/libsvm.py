"""libSVM / libFM text (``label idx:value ...`` / ``label field:idx:value ...``) and ``ipinyou``.

A row is a label and sparse features. Which field an index belongs to comes from the
tokens themselves (libFM: ``field:idx:value``) or from a ``featindex`` file (lines
``field:value<TAB>idx``, as in the iPinYou release of Zhang et al.); each field becomes a
column, its token the feature value (``featindex``) or the index. Without fields, all
indices of a row form one sequence column ``features``. Categorical and sequence features
hold value 1 (one-hot data; another value is a bad row); a field read as a ``numeric`` feature
takes its value.
Parsing is vectorised over blocks of lines (no per-row Python).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ctr.datasets.source import resolve_files, utf8_names
from ctr.datasets.tabular import FileConfig, FileSource
from ctr.datasets.text import TextFormat, read_delimited
from ctr.datasets.validate import LINE_COLUMN, PROBLEM_COLUMN, column_keys, require_columns
from ctr.errors import DataError
from ctr.registry import DATASETS
from ctr.schema import FeatureSpec

ALL_FEATURES = "features"
NO_DELIMITER = "\x01"
FEATINDEX = "featindex.fm.txt"  # the iPinYou release's
RELEASE = ("train.fm.txt", "test.fm.txt", FEATINDEX)


@dataclass
class LibSVMConfig(FileConfig):
    """Options of the ``libsvm`` dataset.

    Args:
        featindex: a file of ``field:value<TAB>idx`` lines naming the field of each index.
    """

    featindex: str | None = None
    path_keys: ClassVar[tuple[str, ...]] = (*FileConfig.path_keys, "featindex")


@dataclass
class FieldIndex:
    """The featindex table: for every index, its field code and its token (the value)."""

    fields: list[str]
    field_of: np.ndarray
    token_of: pa.Array

    @classmethod
    def read(cls, file: Path) -> FieldIndex:
        """Reads ``field:value<TAB>idx`` lines; a malformed line is an error naming it."""
        table = pa.Table.from_batches(list(read_delimited(file, TextFormat(["key", "idx"], "\t", quoting=False))))
        problems = table.column(PROBLEM_COLUMN)
        number = pc.cast(pc.if_else(pc.match_substring_regex(table.column("idx"), r"^\d+$"), table.column("idx"), None), pa.int64())
        key = table.column("key")
        bad = pc.or_(pc.or_(pc.is_valid(problems), pc.is_null(number)), pc.is_null(key))
        if pc.any(bad).as_py():
            row = pc.index(bad, True).as_py()
            raise DataError(f"{file}:{table.column(LINE_COLUMN)[row]}: expected 'field:value<TAB>index'")
        # a key without ':' is a field of its own (e.g. a numeric one); its token is its name
        parts = pc.split_pattern(pc.if_else(pc.match_substring(key, ":"), key, pc.binary_join_element_wise(key, key, ":")), ":", max_splits=1)
        field_names = pc.list_element(parts, 0)
        fields = pc.unique(field_names)
        index = number.to_numpy()
        _refuse_repeated(index, table.column(LINE_COLUMN).to_numpy(), file)
        size = int(index.max()) + 1
        field_of = np.full(size, -1, dtype=np.int64)
        field_of[index] = pc.index_in(field_names, value_set=fields).to_numpy()
        positions = np.full(size, -1, dtype=np.int64)
        positions[index] = np.arange(index.size)
        tokens = pc.list_element(parts, 1).combine_chunks().take(pa.array(positions, mask=positions < 0))
        return cls(fields.to_pylist(), field_of, tokens)


def _refuse_repeated(index: np.ndarray, lines: np.ndarray, file: Path) -> None:
    """A DataError naming the first featindex line whose index [N] an earlier line gave (which
    field it names would be the last line's, silently); ``lines`` [N]: their line numbers."""
    unique, first = np.unique(index, return_index=True)
    repeats = np.setdiff1d(np.arange(index.size), first)
    if repeats.size:
        row = int(repeats[0])
        earlier = int(first[np.searchsorted(unique, index[row])])
        raise DataError(f"{file}:{lines[row]}: index {index[row]} is on line {lines[earlier]} too; name each index once")


@DATASETS.register("libsvm", config=LibSVMConfig)
class LibSVMDataset(FileSource):
    """libSVM / libFM sparse rows; fields from the tokens (libFM) or a featindex file."""

    label = "label"
    listed_defaults_alike = True  # with a featindex (defaults_listed)

    def __init__(self, config: LibSVMConfig):
        super().__init__(config)
        self.featindex = Path(config.featindex).expanduser() if config.featindex else None
        if self.featindex is not None and not self.featindex.is_file():
            raise DataError(f"data.featindex: {self.featindex} does not exist")
        if self.featindex is not None:
            utf8_names([self.featindex], "data.featindex")
            self.split_files = {split: _rows_files(files, self.featindex, split)
                                for split, files in self.split_files.items()}
        self._index: FieldIndex | None = None
        self._defaults: list[FeatureSpec] | None = None
        self._read_kinds: dict[str, str] | None = None
        self._sniffed_fields: list[str] | None = None

    def files(self) -> list[Path]:
        return super().files() + ([self.featindex] if self.featindex else [])

    @property
    def index(self) -> FieldIndex | None:
        if self._index is None and self.featindex is not None:
            self._index = FieldIndex.read(self.featindex)
        return self._index

    def defaults_listed(self) -> dict[str, Any] | None:
        """None without a featindex: the default features make a training row holding a field
        the first rows lack a bad row, where the same features listed read it (rows read
        otherwise)."""
        return super().defaults_listed() if self.featindex is not None else None

    def default_features(self) -> list[FeatureSpec]:
        if self._defaults is None:
            self._defaults = self._default_features()
        return self._defaults

    def _default_features(self) -> list[FeatureSpec]:
        if self.index is not None:
            return [FeatureSpec(name=name) for name in self.index.fields]
        fields = self._sniffed()
        if fields:
            return [FeatureSpec(name=f"field_{f}", source=f) for f in fields]
        return [FeatureSpec(name=ALL_FEATURES, kind="sequence", pooling="sum", max_len=1_000)]

    def read_file(self, file: Path) -> Iterator[pa.RecordBatch]:
        kinds, layout = self._kinds(), self._layout(file)
        for block in read_delimited(file, TextFormat(["line"], NO_DELIMITER, quoting=False)):
            yield parse_rows(block, layout, kinds).replace_schema_metadata(block.schema.metadata)

    def _layout(self, file: Path) -> Layout:
        """The layout of ``file``'s tokens. Rows scored with a run's saved features take the
        run's form (fields: libFM; the one ``features`` sequence: libSVM), and a field no
        feature reads is read by no one. Otherwise the form is that of the first rows of the
        first training file; default features are the fields sniffed there, and a training row
        holding another field is a bad row (elsewhere its field is read by no one)."""
        if self.index is not None:
            return Layout(index=self.index)
        if self.scored_features is not None:
            libfm = all(spec.column != ALL_FEATURES for spec in self.scored_features)
            return Layout(libfm=libfm, origin="the rows of the run's training")
        fields = self._sniffed()
        defaults_read = not self.config.features and file in self.split_files["train"]
        return Layout(libfm=bool(fields), known_fields=frozenset(fields) if defaults_read and fields else None,
                      origin=f"the first rows of {self.split_files['train'][0]}")

    def _sniffed(self) -> list[str]:
        """The libFM fields of the first rows of the first training file (empty: libSVM)."""
        if self._sniffed_fields is None:
            self._sniffed_fields = sniff_fields(self.split_files["train"][0])
        return self._sniffed_fields

    def _kinds(self) -> dict[str, str]:
        """Kind by column of the fields read (the features' and the group's, less an optional
        group that rows to score lack). A field read that is no field of the data
        (featindex's fields, else those of the first rows of the first file) is a DataError
        naming its recipe key."""
        if self._read_kinds is None:
            features = self.config.features or self.scored_features or self.default_features()
            group = self.config.group or self.group
            kinds = {**({group: "categorical"} if group else {}), **{spec.column: spec.kind for spec in features}}
            keys = column_keys(features, self.config.label or self.label, group)
            first = self.split_files["train"][0]
            fields = self.index.fields if self.index is not None else self._sniffed() or [ALL_FEATURES]
            origin = str(self.featindex) if self.index is not None else f"the first rows of {first}"
            if self.scored_features is None:  # rows scored may lack any field (each is then missing)
                require_columns(fields, self.required({column: keys[column] for column in kinds}), origin)
            self._read_kinds = {c: kind for c, kind in kinds.items() if c in fields or c not in self.optional_columns}
        return self._read_kinds


def _rows_files(files: list[Path], featindex: Path, split: str) -> list[Path]:
    """``files`` of ``split`` less the featindex file (a folder may hold it beside the rows);
    a DataError when no file of rows is left."""
    rows = [file for file in files if file.resolve() != featindex.resolve()]
    if not rows:
        key = "data.path" if split == "train" else f"data.{split}_path"
        raise DataError(f"{key}: {featindex} is the featindex (field:value<TAB>index lines), not a file of rows")
    return rows


def sniff_fields(file: Path) -> list[str]:
    """libFM field ids in the first block of ``file`` (empty for libSVM), in numeric order."""
    block = next(read_delimited(file, TextFormat(["line"], NO_DELIMITER, quoting=False), block_bytes=1 << 20))
    tokens = pc.list_flatten(pc.list_slice(_words(block.column("line")), 1))
    return _field_order(pc.unique(_split(tokens).field(0)).to_pylist())


@dataclass(frozen=True)
class Layout:
    """How the tokens of a file name their field.

    Args:
        index: the featindex table (tokens ``idx:value``; an index names its field).
        libfm: tokens are ``field:idx:value`` (else, without ``index``, libSVM's ``idx:value``);
            a token of the other form is a bad row.
        known_fields: libFM fields outside these make a row bad (the default features of a
            training file: they were sniffed from ``origin``); None: any field may appear.
        origin: where the layout was read, for messages.
    """

    index: FieldIndex | None = None
    libfm: bool = False
    known_fields: frozenset[str] | None = None
    origin: str = ""

    def malformed(self) -> str:
        """The problem of a row holding a token of another form."""
        if self.index is not None:
            return "a feature is not 'index:value' or 'field:index:value'"
        form = "'field:index:value' (a libFM file" if self.libfm else "'index:value' (a libSVM file"
        return f"a feature is not {form}, as {self.origin} are)"


def parse_rows(block: pa.RecordBatch, layout: Layout, kinds: dict[str, str]) -> pa.RecordBatch:
    """Lines → ``label``, one column per field (or ``features``), ``__line__``, ``__problem__``.

    Only the fields of ``kinds`` become columns: the values of a field no one reads are not
    checked (a numeric field beside one-hot ones is no bad row), and a field read that a
    block's rows lack (a sparse field, absent from a whole 16 MiB block or test file) is a
    column of missing values.

    Args:
        block: a batch of raw lines (``line``, ``__line__``, ``__problem__``).
        layout: how the tokens name their field.
        kinds: feature kind by column read (the features' and the group's), so fields read as
            sequences or numbers are built so.
    """
    words = _words(pc.fill_null(block.column("line"), ""))
    rows = len(words)
    counts = pc.list_value_length(words).to_numpy(zero_copy_only=False).astype(np.int64)
    row_of = np.repeat(np.arange(rows), np.maximum(counts - 1, 0))
    parsed = _parse_tokens(pc.list_flatten(pc.list_slice(words, 1)), layout)
    problems = _Problems(block.column(PROBLEM_COLUMN))
    label = pc.list_element(pc.list_slice(words, 0, 1), 0) if rows else pa.array([], pa.string())
    problems.flag(np.flatnonzero(pc.fill_null(pc.match_substring(label, ":"), False).to_numpy(zero_copy_only=False)),
                  "the line starts with a feature, not its label (rows to score need one too: 0 where it is unknown)")
    problems.flag(row_of[parsed.bad], layout.malformed())
    problems.flag(row_of[parsed.unknown], "an index is not in featindex")
    _flag_unknown_fields(layout, parsed, row_of, problems)
    columns = {"label": label}
    ok = ~(parsed.bad | parsed.unknown)
    code_of = {name: code for code, name in enumerate(parsed.field_names)}
    for name, kind in kinds.items():  # a field no row of the block holds is missing in each
        in_field = ok & (parsed.field == code_of.get(name, -1))
        columns[name] = _field_column(name, kind, row_of[in_field], parsed, in_field, rows, problems)
    columns[LINE_COLUMN] = block.column(LINE_COLUMN)
    columns[PROBLEM_COLUMN] = problems.column()
    return pa.RecordBatch.from_pydict(columns)


def _words(lines: pa.Array) -> pa.ListArray:
    """Each line's words; blanks at either end make no empty word."""
    return pc.utf8_split_whitespace(pc.utf8_trim_whitespace(lines))


@dataclass
class _Tokens:
    """Parsed tokens [N]: field code, token text, value, and which are malformed or unknown."""

    field: np.ndarray
    field_names: list[str]
    token: pa.Array
    value: np.ndarray
    bad: np.ndarray
    unknown: np.ndarray


def _split(tokens: pa.Array) -> pa.StructArray:
    """``[field:]idx:value`` → struct (field, idx, value); null where the token has another shape."""
    return pc.extract_regex(tokens, r"^(?:(?P<field>[^:]*):)?(?P<idx>[^:]*):(?P<value>[^:]*)$")


def _parse_tokens(tokens: pa.Array, layout: Layout) -> _Tokens:
    """Splits the tokens and assigns each a field (featindex, libFM field, or ``features``);
    a token of the other form than the layout's is bad."""
    index = layout.index
    parts = _split(tokens)
    shaped = parts.is_valid().to_numpy(zero_copy_only=False)
    parts = parts.fill_null({"field": "", "idx": "", "value": ""}) if not shaped.all() else parts
    field_text, idx = parts.field(0), parts.field(1)
    digits = pc.match_substring_regex(idx, r"^\d+$").to_numpy(zero_copy_only=False)
    idx_number = _as_number(idx, r"^\d{1,18}$", pa.int64())  # longer: past any featindex (-1), a token still
    value = _as_number(parts.field(2), r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$", pa.float64())
    bad = ~shaped | np.isnan(value) | ~digits
    unknown = np.zeros(len(tokens), dtype=bool)
    if index is not None:
        inside = (idx_number >= 0) & (idx_number < index.field_of.size)
        field = np.where(inside, index.field_of[np.clip(idx_number, 0, index.field_of.size - 1)], -1)
        unknown = ~bad & (field < 0)
        token = index.token_of.take(pa.array(np.where(field >= 0, idx_number, 0)))
        return _Tokens(field, index.fields, token, value, bad, unknown)
    libfm = pc.not_equal(field_text, "").to_numpy(zero_copy_only=False)
    if layout.libfm:
        names = _field_order(pc.unique(field_text).to_pylist())
        field = pc.index_in(field_text, value_set=pa.array(names, pa.string())).fill_null(-1).to_numpy(zero_copy_only=False)
        return _Tokens(field, names, idx, value, bad | ~libfm, unknown)
    return _Tokens(np.zeros(len(tokens), dtype=np.int64), [ALL_FEATURES], idx, value, bad | libfm, unknown)


def _flag_unknown_fields(layout: Layout, parsed: _Tokens, row_of: np.ndarray, problems: _Problems) -> None:
    """Marks the rows holding a libFM field outside ``layout.known_fields``."""
    if layout.known_fields is None:
        return
    for code, name in enumerate(parsed.field_names):
        if name not in layout.known_fields:
            rows = row_of[~parsed.bad & (parsed.field == code)]
            problems.flag(rows, f"field {name!r} is absent from {layout.origin}, where the default features "
                                "were read; list the features under data.features")


def _field_order(fields: list[str | None]) -> list[str]:
    """Field ids in numeric order (shorter first), without the empty one."""
    return sorted((f for f in fields if f), key=lambda f: (len(f), f))


def _as_number(text: pa.Array, pattern: str, kind: pa.DataType) -> np.ndarray:
    """Parses ``text`` where it matches ``pattern``; -1 (ints) or NaN (floats) elsewhere."""
    good = pc.match_substring_regex(text, pattern)
    parsed = pc.cast(pc.if_else(good, text, None), kind)
    return parsed.fill_null(-1 if kind == pa.int64() else float("nan")).to_numpy(zero_copy_only=False)


class _Problems:
    """The ``__problem__`` column of a block: the reader's own plus those found here."""

    def __init__(self, reported: pa.Array):
        self.reported = reported
        self.code = np.zeros(len(reported), dtype=np.int64)
        self.messages: list[str | None] = [None]

    def flag(self, rows: np.ndarray, message: str) -> None:
        """Marks ``rows`` with ``message`` (a row keeps its first problem)."""
        if rows.size == 0:
            return
        self.messages.append(message)
        rows = np.unique(rows)
        fresh = rows[self.code[rows] == 0]
        self.code[fresh] = len(self.messages) - 1

    def column(self) -> pa.Array:
        if len(self.messages) == 1:
            return self.reported
        found = pa.array(self.messages, pa.string()).take(pa.array(self.code))
        return pc.coalesce(self.reported, found)


def _field_column(name, kind, rows, parsed: _Tokens, in_field, n, problems: _Problems) -> pa.Array:
    """One field's column [n]: a token (or the value, if numeric) per row, or a list for sequences.

    Args:
        rows: int64 [M] row of each of the field's tokens (in row order); ``in_field``: mask
            of those tokens among all tokens.
    """
    tokens = parsed.token.filter(pa.array(in_field))
    values = parsed.value[in_field]
    if kind == "sequence":
        problems.flag(rows[values != 1.0], f"{_named(name)} has a value other than 1 (a sequence reads its indices only)")
        offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), tokens)
    unique, first, seen = np.unique(rows, return_index=True, return_counts=True)
    problems.flag(unique[seen > 1], f"field {name!r} appears more than once")
    where = np.full(n, -1, dtype=np.int64)
    where[unique] = first
    if kind == "numeric":
        numbers = np.full(n, np.nan)
        numbers[unique] = values[first]
        return pa.array(numbers, from_pandas=True)
    problems.flag(unique[values[first] != 1.0], f"field {name!r} has a value other than 1 (declare it numeric)")
    return tokens.take(pa.array(where, mask=where < 0))


def _named(name: str) -> str:
    return "a feature" if name == ALL_FEATURES else f"field {name!r}"


@dataclass
class IPinYouConfig(LibSVMConfig):
    """Options of the ``ipinyou`` dataset (``path``: the folder of the release).

    ``scored`` is no recipe key: ``reading`` sets it for rows to score, which are read alone
    (no test file of their folder joins them) with the training's featindex.
    """

    scored: bool = field(default=False, init=False, repr=False)

    def input_paths(self) -> dict[str, Path]:
        """The recipe's paths and the release's files (``data.path`` may name its train file);
        rows to score (``scored``) are read alone, with the featindex training read."""
        if self.scored:
            return super().input_paths()
        try:
            folder = _ipinyou_folder(self.path)
        except DataError:  # gone or incomplete: reading it says so
            return super().input_paths()
        return super().input_paths() | {f"data.path's {name}": folder / name for name in RELEASE}

    def reading(self, path: Path) -> IPinYouConfig:
        """Every row of ``path``, fields named by the featindex training read; a folder holding a
        featindex (a release: with train and test files) is refused, naming a file to give."""
        if path.is_dir() and (path / FEATINDEX).is_file():
            _refuse_featindex_folder(path)
        config = super().reading(path)
        config.featindex = self.featindex or self._trained_featindex(path)
        config.scored = True
        return config

    def _trained_featindex(self, path: Path) -> str:
        """The featindex of the release training read; a DataError naming ``path`` (the rows
        to score) and what is missing when it is gone."""
        try:
            return str(_ipinyou_folder(self.path) / FEATINDEX)
        except DataError as err:
            raise DataError(f"{path}: its indices are named by the featindex of the run's release, not found "
                            f"({err})") from None


@DATASETS.register("ipinyou", config=IPinYouConfig)
class IPinYouDataset(LibSVMDataset):
    """iPinYou RTB display-ad clicks in libFM form: train.fm.txt, test.fm.txt, featindex.fm.txt."""

    def __init__(self, config: IPinYouConfig):
        if config.scored:
            super().__init__(config)
            return
        folder = _ipinyou_folder(config.path)
        train = folder / "train.fm.txt" if Path(config.path).expanduser().is_dir() else Path(config.path)
        if train.resolve() == (folder / "test.fm.txt").resolve() and not config.test_path:
            raise DataError(f"data.path: {train} is the release's test file (its rows would be trained on and "
                            f"tested on); give the folder {folder} or its train.fm.txt")
        resolved = replace(
            config,
            path=str(train),
            featindex=config.featindex or str(folder / FEATINDEX),
            test_path=config.test_path or str(folder / "test.fm.txt"),
        )
        super().__init__(resolved)


def _refuse_featindex_folder(folder: Path) -> None:
    """A DataError for rows to score given as ``folder``, which holds a featindex: a release
    folder names its test file, another folder one of its other files."""
    if all((folder / name).is_file() for name in RELEASE):
        raise DataError(f"{folder}: an iPinYou release folder (train, test and {FEATINDEX}); give the file to "
                        f"score, e.g. {folder / 'test.fm.txt'}")
    others = [file for file in resolve_files(str(folder)) if file.name != FEATINDEX]
    example = f", e.g. {others[0]}" if others else ""
    raise DataError(f"{folder}: holds {FEATINDEX}, whose lines are no rows; give the file to score{example}")


def _ipinyou_folder(path: str | None) -> Path:
    files = resolve_files(path, "data.path", "*.fm.txt")
    folder = files[0].parent
    for name in RELEASE:
        if not (folder / name).is_file():
            raise DataError(f"data.path: {folder} lacks {name} (the iPinYou release has train, test and featindex)")
    return folder
