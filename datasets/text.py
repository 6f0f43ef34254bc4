"""Streaming reader of delimited text (CSV, TSV) into Arrow record batches of strings.

The file is cut into blocks of whole lines; each block is parsed by ``pyarrow.csv`` with
every column read as a string (an empty field is null), so a bad value becomes a row problem that preprocessing
reports (or skips) instead of a parser exception. Every batch carries the file name (batch
metadata ``file``), the line number of each row (``__line__``) and a ``__problem__`` column:
null for a good row, else what is wrong with it (e.g. a wrong field count, a line that is
not UTF-8 text); the other columns of such a row are null. Blank lines are skipped (the
line numbers of the rows stay the file's), and so is a UTF-8 byte order mark at the start
of the file. A last line without its newline is read, and cut into blocks, as it is with it.
A gzip file is read decompressed; gzip data that ends early or does not
inflate is a DataError naming the last line read whole.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ctr.datasets.validate import LINE_COLUMN, PROBLEM_COLUMN, carriage_return_inside
from ctr.errors import DataError, reason

BLOCK_BYTES = 1 << 24
GZIP_MAGIC = b"\x1f\x8b"
GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)  # a truncated or corrupt gzip stream
# the first bytes of other compressed data (bzip2: "BZh", a level digit, then a block's or the end's magic)
OTHER_COMPRESSION = {"bzip2": rb"BZh[1-9](1AY&SY|\x17rE8P\x90)", "xz": rb"\xfd7zXZ\x00", "zip": rb"PK\x03\x04",
                     "zstd": rb"\x28\xb5\x2f\xfd"}
MAGIC_BYTES = 10
# The csv module that reads single lines here refuses fields over 128 KiB by default; a line
# of a block is bounded by the block, which pyarrow's parser reads whatever its fields' size.
csv.field_size_limit(2**31 - 1)


class EmptyFileError(DataError):
    """A data file holds no rows (``on_bad_rows: skip`` skips such a file among others)."""


@dataclass
class TextFormat:
    """How a delimited file is laid out.

    Args:
        columns: names of the fields of a row, in order.
        delimiter: field separator.
        header: the first line is a header (not data); the caller checks it.
        quoting: fields may be quoted with ``"``.
        min_fields: rows with fewer fields than ``columns`` but at least ``min_fields`` are
            padded with empty fields (raw Criteo DAC rows lack trailing empty fields);
            ``None`` = every row needs exactly ``len(columns)`` fields.
        keep: the columns to return (``None`` = all).
    """

    columns: list[str]
    delimiter: str = ","
    header: bool = False
    quoting: bool = True
    min_fields: int | None = None
    keep: list[str] | None = None

    @property
    def kept(self) -> list[str]:
        return self.columns if self.keep is None else [c for c in self.columns if c in set(self.keep)]


def open_rows(file: Path) -> BinaryIO:
    """``file`` opened for reading bytes; a gzip file (told by its first two bytes, as the
    Criteo Terabyte release's ``day_0.gz``) is decompressed as it is read; data of another
    compression is a DataError naming it."""
    with open(file, "rb") as probe:
        start = probe.read(MAGIC_BYTES)
    refuse_other_compression(file, start)
    compressed = start.startswith(GZIP_MAGIC)
    return gzip.open(file, "rb") if compressed else open(file, "rb")  # type: ignore[return-value]


def refuse_other_compression(file: Path, start: bytes | None = None, key: str = "") -> None:
    """A DataError (its message led by ``key``) when ``file``, whose first bytes are ``start``
    (read when None), holds bzip2, xz, zip or zstd data: text is read plain or gzip-compressed."""
    if start is None:
        with open(file, "rb") as probe:
            start = probe.read(MAGIC_BYTES)
    kind = next((name for name, magic in OTHER_COMPRESSION.items() if re.match(magic, start)), None)
    if kind is not None:
        lead = f"{key}: " if key else ""
        raise DataError(f"{lead}{file}: {kind} data; text files are read plain or gzip-compressed (recompress it "
                        "with gzip)")


PARQUET_MAGIC = b"PAR1"  # the first bytes of a parquet file


def first_line(file: Path) -> str | None:
    """The first line of ``file`` that is not blank, without its newline (and without a UTF-8
    byte order mark, which spreadsheet programs write); ``None`` for an empty file."""
    return _first_line(file)[1]


def first_line_number(file: Path) -> int:
    """The line number (from 1) of ``first_line``: after the blank lines before it, which
    an error about the header or the first row names."""
    return _first_line(file)[0]


def _first_line(file: Path) -> tuple[int, str | None]:
    """``first_line`` of ``file`` and its line number (from 1)."""
    with open_rows(file) as handle:
        try:
            _skip_byte_order_mark(handle)
            line, blank = _skip_blank_lines(handle)
        except GZIP_ERRORS as err:
            raise corrupt_gzip(file, 0, err) from None
    if not line.strip():
        return blank + 1, None
    if line.startswith(PARQUET_MAGIC):
        raise DataError(f"{file}: a parquet file, not text (data.dataset: parquet reads it)")
    if blank == 0 and line.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{file}: UTF-16 text (its byte order mark says so); text is read as UTF-8: convert it, e.g. "
                        "iconv -f UTF-16 -t UTF-8")
    if b"\x00" in line:
        raise DataError(f"{file}: not a text file (its first line holds NUL bytes)")
    return blank + 1, line.rstrip(b"\r\n").decode("utf-8", errors="replace")


def _skip_byte_order_mark(handle: BinaryIO) -> None:
    if handle.read(len(codecs.BOM_UTF8)) != codecs.BOM_UTF8:
        handle.seek(0)


def _skip_blank_lines(handle: BinaryIO) -> tuple[bytes, int]:
    """The next line of ``handle`` that is not blank (``\\n`` or ``\\r\\n`` alone, which the
    parser skips; ``b""`` at the end), and the number of blank lines read before it."""
    blank = 0
    while (line := handle.readline()) in (b"\n", b"\r\n"):
        blank += 1
    return line, blank


def header_line(file: Path) -> str | None:
    """``first_line`` of a file that starts with a header (blank lines before it are skipped,
    as ``read_delimited`` skips them); a ``\\r`` left inside it (a file of old Mac line ends,
    ``\\r`` alone, is one line) is the error of any line it splits."""
    number, line = _first_line(file)
    if line is not None and "\r" in line:
        raise carriage_return_inside(file, number)
    return line


def read_delimited(file: Path, fmt: TextFormat, block_bytes: int = BLOCK_BYTES) -> Iterator[pa.RecordBatch]:
    """Record batches of ``file`` (one per block of about ``block_bytes``), as described above.

    Raises:
        EmptyFileError: the file holds no data lines.
        DataError: a block cannot be parsed at all.
    """
    rows = 0
    with open_rows(file) as handle:
        line = 1
        try:
            _skip_byte_order_mark(handle)
            if fmt.header:
                line += _skip_blank_lines(handle)[1] + 1
            for block in _blocks(handle, block_bytes):
                lines = _line_count(block)
                batch = _parse_block(block, line, lines, fmt, file)
                rows += batch.num_rows
                line += lines
                yield batch
        except _Truncated as err:
            raise corrupt_gzip(file, line - 1 + err.data.count(b"\n"), err.cause) from None
        except GZIP_ERRORS as err:  # in the byte order mark or the header
            raise corrupt_gzip(file, line - 1, err) from None
    if rows == 0:
        raise EmptyFileError(f"{file}: empty file (no data rows)")


def read_all(file: Path) -> bytes:
    """Every byte of ``file`` (decompressed when gzip); gzip data that ends early or does
    not inflate is a DataError naming the last line read whole."""
    pieces = []
    with open_rows(file) as handle:
        try:
            while piece := _read(handle, BLOCK_BYTES):
                pieces.append(piece)
        except _Truncated as err:
            raise corrupt_gzip(file, sum(p.count(b"\n") for p in pieces) + err.data.count(b"\n"), err.cause) from None
    return b"".join(pieces)


def corrupt_gzip(file: Path, lines: int, cause: BaseException) -> DataError:
    """The error for gzip data that ends early or does not inflate after ``lines`` whole lines."""
    return DataError(f"{file}: truncated or corrupt gzip data after line {lines} ({reason(cause)})")


class _Truncated(Exception):
    """A read that met a truncated or corrupt gzip stream (``cause``); ``data``: the bytes
    it gave before."""

    def __init__(self, data: bytes, cause: BaseException):
        super().__init__(str(cause))
        self.data, self.cause = data, cause


def _read(handle: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes (fewer only at the end of the file). Read in pieces (one for a
    plain file, one per inflated chunk for gzip), so that a gzip stream that fails keeps
    what it gave before (``_Truncated``)."""
    pieces: list[bytes] = []
    got = 0
    try:
        while got < size:
            piece = handle.read1(size - got)
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
    except GZIP_ERRORS as err:
        raise _Truncated(b"".join(pieces), err) from None
    return b"".join(pieces)


def _blocks(handle: BinaryIO, block_bytes: int) -> Iterator[bytes]:
    """Chunks of whole lines, the last one the rest of the file (its last line may lack its
    newline), so a file without its last newline is cut where it is with it; a last line
    that is a lone ``\\r`` is left out (blank, as ``\\r\\n`` is). A ``_Truncated`` read
    carries the bytes read since the last chunk."""
    carry = b""
    while True:
        try:
            chunk = _read(handle, block_bytes)
        except _Truncated as err:
            err.data = carry + err.data
            raise
        data = carry + chunk
        if len(chunk) < block_bytes:  # the end of the file
            break
        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        if cut:
            yield data[:cut]
    rest = data[:-1] if data[-2:] in (b"\r", b"\n\r") else data
    if rest:
        yield rest


def _line_count(block: bytes) -> int:
    return block.count(b"\n") + (0 if block.endswith(b"\n") else 1)


def _parse(block: bytes, fmt: TextFormat, handler, threads: bool) -> pa.Table:
    return pacsv.read_csv(
        io.BytesIO(block),
        read_options=pacsv.ReadOptions(column_names=fmt.columns, use_threads=threads, block_size=len(block) + 1),
        parse_options=pacsv.ParseOptions(
            delimiter=fmt.delimiter,
            quote_char='"' if fmt.quoting else False,
            ignore_empty_lines=True,
            invalid_row_handler=handler,
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in fmt.columns},
            include_columns=fmt.kept,
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )


class _BlockLines:
    """The lines of a block, found once: ``data`` its bytes [N] (uint8), ``ends`` the offset
    of each ``\\n`` [E], ``starts`` the offset where each line starts [E + 1] (the last line
    is the text after the last ``\\n``, maybe empty)."""

    def __init__(self, block: bytes):
        self.block = block
        self.data = np.frombuffer(block, dtype=np.uint8)
        self.ends = np.flatnonzero(self.data == ord("\n"))
        self.starts = np.concatenate([[0], self.ends + 1])

    def line_of(self, offsets: np.ndarray) -> np.ndarray:
        """The line index [k] (0-based) of each byte offset."""
        return np.searchsorted(self.ends, offsets)

    def holding(self, byte_mask: np.ndarray) -> np.ndarray:
        """Indices (sorted, unique) of the lines holding a byte where ``byte_mask`` [N] is true."""
        return np.unique(self.line_of(np.flatnonzero(byte_mask)))

    def line(self, k: int) -> bytes:
        """Line ``k`` without its ``\\n``."""
        return self.block[self.starts[k] : self.ends[k] if k < len(self.ends) else len(self.block)]


def _parse_block(block: bytes, first: int, lines: int, fmt: TextFormat, file: Path) -> pa.RecordBatch:
    """``lines`` lines from line ``first`` → a batch with ``__line__`` and ``__problem__``."""
    invalid: list[tuple[int, str]] = []
    last = first + lines - 1
    view = _BlockLines(block)
    try:
        table, not_utf8 = _parse_text(view, first, fmt, invalid)
    except (pa.ArrowInvalid, UnicodeDecodeError) as err:
        raise DataError(f"{file}:{first}-{last}: cannot parse: {str(err).splitlines()[0]}") from None
    blank = _blank_lines(view)
    read = np.setdiff1d(np.arange(lines, dtype=np.int64), blank, assume_unique=True)  # the parser counts these only
    if table.num_rows + len(invalid) != len(read):
        _refuse_line_breaks(view, first, last, fmt, file)
    bad_lines = first + read[np.array([number - 1 for number, _ in invalid], dtype=np.int64)]
    skipped = np.union1d(bad_lines, first + blank)
    good_lines = np.setdiff1d(np.arange(first, last + 1, dtype=np.int64), skipped, assume_unique=True)
    if fmt.quoting:
        _refuse_open_quote_at_end(block, first, fmt.delimiter, file)
    table = table.append_column(LINE_COLUMN, pa.array(good_lines))
    table = table.append_column(PROBLEM_COLUMN, pa.nulls(table.num_rows, pa.string()))
    if invalid:
        fixed = _invalid_rows(invalid, bad_lines, fmt, file)
        table = pa.concat_tables([table, fixed]).sort_by(LINE_COLUMN)
    if not_utf8:
        table = _flag_lines(table, not_utf8, fmt)
    return to_batch(table).replace_schema_metadata({"file": str(file)})


def _parse_text(lines: _BlockLines, first: int, fmt: TextFormat, invalid: list[tuple[int, str]]) -> tuple[pa.Table, dict]:
    """The rows of a block (from line ``first``), and line number → problem of its lines
    that are not UTF-8 text (None where only a column no one reads is not): the parser
    refuses the whole block for one such byte in a column it reads (and, given a handler of
    rows of other field counts, fails to decode a row holding one for it: the first parse of
    such a block has none), so then they are found and read as ASCII."""
    if _is_utf8(lines.block):
        return _parse_rows(lines.block, fmt, invalid), {}
    try:  # such bytes in columns no one reads only, every row of its field count: read as it is
        return _parse(lines.block, fmt, None, threads=True), {}
    except pa.ArrowInvalid:
        not_utf8 = _not_utf8(lines, first, fmt)
    return _parse_rows(_ascii_lines(lines, np.array(list(not_utf8)) - first), fmt, invalid), not_utf8


def _is_utf8(block: bytes) -> bool:
    """Whether ``block`` is UTF-8 text: checked by Arrow's validation of it as one string
    (a fifth of Python's decode time) where it holds a byte past ASCII."""
    if block.isascii():
        return True
    offsets = pa.py_buffer(np.array([0, len(block)], dtype=np.int64))
    text = pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(block)])
    try:
        text.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _parse_rows(block: bytes, fmt: TextFormat, invalid: list[tuple[int, str]]) -> pa.Table:
    """The block's rows; ``invalid`` is set to the rows the parser rejects, as (row number
    among the rows read, text)."""
    invalid.clear()
    table = _parse(block, fmt, lambda row: invalid.append((0, "")) or "skip", threads=True)
    if invalid:  # only the single-threaded parser reports line numbers of bad rows
        invalid.clear()
        table = _parse(block, fmt, lambda row: invalid.append((row.number, row.text)) or "skip", False)
    return table


def _not_utf8(lines: _BlockLines, first: int, fmt: TextFormat) -> dict[int, str | None]:
    """Line number → its problem, of the lines of a block (from line ``first``) that are
    not UTF-8 text; None where only columns no one reads are not (for a block the parser
    refused only: a vectorised search for lines with bytes past ASCII, then each such line
    decoded)."""
    found: dict[int, str | None] = {}
    kept = set(fmt.kept)
    for k in lines.holding(lines.data >= 0x80).tolist():
        columns = _not_utf8_columns(lines.line(k), fmt)
        read = [c for c in columns if c in kept]
        if read:
            found[first + k] = "not UTF-8 text" if len(fmt.columns) == 1 else f"column {read[0]!r}: not UTF-8 text"
        elif columns:
            found[first + k] = None
    return found


def _not_utf8_columns(line: bytes, fmt: TextFormat) -> list[str | None]:
    """The columns of ``line`` that hold bytes that are not UTF-8, in order (None: past the
    last column)."""
    columns, start = [], 0
    while True:
        try:
            line[start:].decode("utf-8")
            return columns
        except UnicodeDecodeError as err:
            at = start + err.start
        field = field_count(line[:at].decode("utf-8", errors="replace"), fmt.delimiter, fmt.quoting) - 1
        columns.append(fmt.columns[field] if field < len(fmt.columns) else None)
        start = at + 1


def _ascii_lines(view: _BlockLines, lines: np.ndarray) -> bytes:
    """The block with every byte past ASCII of lines [k] (0-based) replaced by ``?``: the
    parser then reads those lines (as many fields, same line breaks) and ``_flag_lines``
    makes them problem rows."""
    high = np.flatnonzero(view.data >= 0x80)
    data = view.data.copy()
    data[high[np.isin(view.line_of(high), lines)]] = ord("?")
    return data.tobytes()


def _flag_lines(table: pa.Table, problems: dict[int, str], fmt: TextFormat) -> pa.Table:
    """``table`` with the rows of the lines of ``problems`` made problem rows (their values
    null; a row that already has a problem keeps it)."""
    lines = table.column(LINE_COLUMN).to_pylist()
    found = pa.array([problems.get(line) for line in lines], pa.string())
    hit = found.is_valid()
    for name in fmt.kept:
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, pc.if_else(hit, pa.scalar(None, pa.string()), table.column(index)))
    problem = pc.coalesce(table.column(PROBLEM_COLUMN), found)
    return table.set_column(table.schema.get_field_index(PROBLEM_COLUMN), PROBLEM_COLUMN, problem)


def _blank_lines(lines: _BlockLines) -> np.ndarray:
    """Indices [k] (0-based, int64) of the block's empty lines (``\n`` or ``\r\n`` alone),
    which the parser skips."""
    starts, ends = lines.starts[: len(lines.ends)], lines.ends
    length = ends - starts
    blank = (length == 0) | ((length == 1) & (lines.data[np.minimum(starts, len(lines.data) - 1)] == ord("\r")))
    return np.flatnonzero(blank)


LONE_CARRIAGE_RETURN = re.compile(rb"\r(?!\n)")


def _refuse_line_breaks(lines: _BlockLines, first: int, last: int, fmt: TextFormat, file: Path) -> None:
    """Raises where the parser's rows and the block's lines (``\\n``-ended) disagree: a
    ``\\r`` not followed by ``\\n`` ends a row inside a line, a quoted ``\\n`` joins two lines
    into one row (named by the line whose quote it is); either would shift every later line
    number."""
    found = LONE_CARRIAGE_RETURN.search(lines.block)
    if found is not None:
        raise carriage_return_inside(file, first + int(lines.line_of(found.start())))
    opened = _first_open_quote(lines, fmt.delimiter) if fmt.quoting else None
    where = f"{first}-{last}" if opened is None else str(first + opened)
    raise DataError(f"{file}:{where}: rows and lines do not match (a line break inside a quoted field?)")


def _first_open_quote(lines: _BlockLines, delimiter: str) -> int | None:
    """Index (0-based) of the first line of a block whose quoted field runs past its end
    (None: none does). The lines before it are read as the parser reads them, each on its
    own, so this is where its rows and the lines part. On the error path only."""
    for k in lines.holding(lines.data == ord('"')).tolist():
        if _open_quote(lines.line(k), delimiter):
            return k
    return None


def _open_quote(line: bytes, delimiter: str) -> bool:
    """Whether ``line`` (without its ``\\n``) ends inside a quoted field, read as the parser
    reads it (a ``"`` opens a quoted field at the start of a field only): the csv module then
    runs the field on past the line's end."""
    text = line.decode("utf-8", errors="replace")
    return '"' in text and any("\n" in field for field in next(csv.reader([text + "\n"], delimiter=delimiter)))


def _refuse_open_quote_at_end(block: bytes, first: int, delimiter: str, file: Path) -> None:
    """Raises when the block's last line (its last that is not blank) opens a quoted field
    that nothing closes: the parser would read the field to the end of the block, its line
    break included (a quote opened on an earlier line joins lines: ``_refuse_line_breaks``)."""
    end = len(block)
    while end and block[end - 1] in b"\r\n":
        end -= 1
    start = block.rfind(b"\n", 0, end) + 1
    if b'"' in block[start:end] and _open_quote(block[start:end], delimiter):
        line = first + block.count(b"\n", 0, start)
        raise DataError(f"{file}:{line}: a quoted field is not closed before the line ends")


def _invalid_rows(invalid: list[tuple[int, str]], lines: np.ndarray, fmt: TextFormat, file: Path) -> pa.Table:
    """Rows the parser rejected: padded when allowed (short DAC rows), else problem rows."""
    want = len(fmt.columns)
    padded, padded_lines, problems, problem_lines = [], [], [], []
    for (_, text), line in zip(invalid, lines):
        fields = field_count(text, fmt.delimiter, fmt.quoting)
        if fmt.min_fields is not None and fmt.min_fields <= fields < want:
            padded.append(text + fmt.delimiter * (want - fields))
            padded_lines.append(line)
        else:
            problems.append(f"{fields} fields, expected {want}")
            problem_lines.append(line)
    parts = []
    if padded:
        table = _parse(("\n".join(padded) + "\n").encode(), fmt, lambda row: "error", threads=False)
        table = table.append_column(LINE_COLUMN, pa.array(padded_lines, pa.int64()))
        parts.append(table.append_column(PROBLEM_COLUMN, pa.nulls(table.num_rows, pa.string())))
    if problems:
        columns = {c: pa.nulls(len(problems), pa.string()) for c in fmt.kept}
        columns[LINE_COLUMN] = pa.array(problem_lines, pa.int64())
        columns[PROBLEM_COLUMN] = pa.array(problems, pa.string())
        parts.append(pa.table(columns))
    return pa.concat_tables(parts)


def field_count(text: str, delimiter: str, quoting: bool) -> int:
    """Fields of one line (with ``quoting``, delimiters inside quotes do not count)."""
    if not quoting or '"' not in text:
        return text.count(delimiter) + 1
    return len(next(csv.reader([text], delimiter=delimiter)))


def to_batch(table: pa.Table) -> pa.RecordBatch:
    """A table as one record batch (also when it has no rows)."""
    batches = table.combine_chunks().to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)


RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")  # the suffixes of RecBole's typed headers


def strip_types(names: list[str]) -> list[str]:
    """Header names without RecBole-style type suffixes (``user_id:token`` → ``user_id``); a
    name whose ``:`` leads no such type is kept whole (``ctr:7d``)."""
    parts = [name.strip().rpartition(":") for name in names]
    return [head.strip() if colon and type_.strip() in RECBOLE_TYPES else head + colon + type_ for head, colon, type_ in parts]
