"""Row checks before encoding: a present, binary label and parsable numbers.

Readers may attach a ``__line__`` column (line number of each row in its file) and the
record batch metadata ``file``; error messages then name file and line. A reader that finds
a row it cannot read (a wrong field count, say) keeps the row with null values and says
what is wrong in a ``__problem__`` column (null for good rows), so that such rows are
reported or skipped like any other bad row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ctr.datasets.transforms import LOG_SQUARE_ABOVE, reads, unreadable_type
from ctr.datasets.vocab import integer_ids
from ctr.errors import DataError, RecipeError
from ctr.schema import FLOAT32_MAX, FLOAT32_RANGE, FeatureSpec

LINE_COLUMN = "__line__"
PROBLEM_COLUMN = "__problem__"
NUMBER = r"^\s*[-+]?((\d+\.?\d*)|(\.\d+))([eE][-+]?\d+)?\s*$|^\s*[-+]?(inf|nan)\s*$|^\s*$"
NON_FINITE = r"^\s*[-+]?(inf|infinity|nan)\s*$"
STORED_AS_READ = ("none", "standardize")  # numeric transforms whose encoded value grows with the raw one
INTEGER = r"^\s*[-+]?\d+(\.0*)?\s*$|^\s*$"  # an id of a num_ids column (or a missing one)


@dataclass(frozen=True)
class Limit:
    """The size of a number a feature's encoded data holds: |x| <= ``size`` for x <= ``upto``
    (larger x are brought in range by the transform); ``what`` names the range in messages."""

    size: float
    upto: float
    what: str


NO_LIMIT = Limit(math.inf, math.inf, "")


def _number_limit(spec: FeatureSpec) -> Limit:
    """The limit of a numeric (or ``log_square`` categorical) feature's raw values: float32
    where the encoded data stores x as read or standardized, or log_square's round(x) of
    x <= 2; int64 for a log_square categorical's token round(x) (|x| <= 2**63 is exactly
    that range for x <= 2: -2**63 is a float64)."""
    if spec.transform == "log_square" and spec.kind != "numeric":
        return Limit(2.0**63, LOG_SQUARE_ABOVE, f"the int64 range (±{2.0**63:.4g}) of a log_square token")
    if spec.transform == "log_square":
        return Limit(FLOAT32_MAX, LOG_SQUARE_ABOVE, FLOAT32_RANGE)
    return Limit(FLOAT32_MAX, math.inf, FLOAT32_RANGE) if spec.transform in STORED_AS_READ else NO_LIMIT


@dataclass
class RowCheck:
    """Result of checking a batch: rows to keep, labels of kept rows, first problem."""

    keep: np.ndarray
    labels: np.ndarray
    problem: str | None
    first_bad: int


def carriage_return_inside(file: Path, line: int) -> DataError:
    """The error for a ``\\r`` that splits line ``line`` of ``file`` (it would shift every
    later line number)."""
    return DataError(f"{file}:{line}: a carriage return (\\r) inside the line; lines end with \\n or \\r\\n")


def check_rows(batch: pa.RecordBatch, features: list[FeatureSpec], label: str) -> RowCheck:
    """Flags rows with a missing or non-binary label or an unparsable or non-finite numeric
    value (``inf``, ``nan``: a missing value is an empty field)."""
    problems = []
    if PROBLEM_COLUMN in batch.schema.names:
        reported = batch.column(PROBLEM_COLUMN)
        if reported.null_count < len(reported):
            flagged = reported.is_valid().to_numpy(zero_copy_only=False)
            problems.append((flagged, lambda row: reported[row].as_py()))
    labels, bad, describe = _label_values(batch.column(label), label)
    problems.append((bad, describe))
    id_tables = {spec.name for spec in features if spec.num_ids}
    for spec in features:
        if spec.num_ids or spec.share_with in id_tables:  # a sharer of a num_ids table holds its ids too
            problems.extend(_id_problems(spec.column, batch.column(spec.column)))
        elif spec.kind == "numeric" or spec.transform == "log_square":
            problems.extend(_numeric_problems(spec.column, batch.column(spec.column), _number_limit(spec)))
    any_bad = np.logical_or.reduce([mask for mask, _ in problems])
    if not any_bad.any():
        return RowCheck(keep=~any_bad, labels=labels, problem=None, first_bad=-1)
    first = int(np.argmax(any_bad))
    describe_first = next(d for mask, d in problems if mask[first])
    return RowCheck(keep=~any_bad, labels=labels, problem=describe_first(first), first_bad=first)


def _numeric_problems(name: str, column: pa.Array, limit: Limit) -> list[tuple[np.ndarray, Callable[[int], str]]]:
    """(rows flagged, description) of a numeric column: values that are not numbers (text
    only) and values that are not finite or past ``limit``. Text is cast once; the regexes
    run only when a value does not parse."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return [(_non_finite(column, limit), _not_finite(name, column, limit))]
    try:  # the fast path: every value parses (inf, nan and 1e400 too)
        return [(_non_finite(pc.cast(column, pa.float64()), limit), _not_finite(name, column, limit))]
    except pa.ArrowInvalid:
        pass
    ok = pc.fill_null(pc.match_substring_regex(column, NUMBER, ignore_case=True), True)
    named = pc.fill_null(pc.match_substring_regex(column, NON_FINITE, ignore_case=True), False)
    non_finite = named.to_numpy(zero_copy_only=False) | _non_finite(_as_numbers(column), limit)
    return [(~ok.to_numpy(zero_copy_only=False), _not_a_number(name, column)),
            (non_finite, _not_finite(name, column, limit))]


def _id_problems(name: str, column: pa.Array) -> list[tuple[np.ndarray, Callable[[int], str]]]:
    """(rows flagged, description) of a ``num_ids`` column: present values that are not
    whole numbers in the int64 range (text may have blanks around it and a zero fraction,
    ``3.0``). Text is cast once; the regex runs only when a value does not cast."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        try:
            integer_ids(column, name)
            return []
        except DataError:
            pass
        whole = pc.fill_null(pc.match_substring_regex(column, INTEGER), True).to_numpy(zero_copy_only=False)
        bad = ~whole | _text_past_int64(column, whole)
    elif pa.types.is_floating(column.type):
        values = np.asarray(column.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.float64)
        with np.errstate(invalid="ignore"):
            bad = column.is_valid().to_numpy(zero_copy_only=False) & ~(np.floor(values) == values)
        bad |= _past_int64(column)
    else:
        return []
    return [(bad, lambda row: f"column {name!r}: not an integer id: {column[row].as_py()!r}")]


def _text_past_int64(column: pa.Array, whole: np.ndarray) -> np.ndarray:
    """The ``whole`` numbers of a text column [n] that no int64 holds, exactly, bool [n]:
    float64 finds the few candidates (it reads 2**63 - 1 as 2**63), Python's int decides."""
    past = whole & _past_int64(_as_numbers(column))
    for row in np.flatnonzero(past):
        past[row] = not -(2**63) <= int(Decimal(column[row].as_py())) < 2**63
    return past


def _past_int64(numbers: pa.Array) -> np.ndarray:
    """Present values [n] (float64 or float32) that no int64 holds, bool [n]."""
    values = np.asarray(numbers.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.float64)
    return np.abs(values) >= 2.0**63


def _not_a_number(name: str, column: pa.Array):
    return lambda row: f"column {name!r}: not a number: {column[row].as_py()!r}"


def _non_finite(column: pa.Array, limit: Limit) -> np.ndarray:
    """Present values of a number column that are ``inf``, ``-inf`` or ``nan``, or past
    ``limit`` (``1e39`` stored as read would be ``inf`` in float32), bool [n]."""
    if not pa.types.is_floating(column.type):
        return np.zeros(len(column), dtype=bool)
    present = column.is_valid().to_numpy(zero_copy_only=False)
    values = np.asarray(column.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.float64)
    with np.errstate(invalid="ignore"):
        past = (np.abs(values) > limit.size) & (values <= limit.upto)
        return present & (~np.isfinite(values) | past)


def _as_numbers(column: pa.Array) -> pa.Array:
    """Text as float64, surrounding blanks ignored; empty or unparsable text is null."""
    trimmed = pc.utf8_trim_whitespace(column)
    parsable = pc.and_(pc.fill_null(pc.match_substring_regex(trimmed, NUMBER, ignore_case=True), False),
                       pc.fill_null(pc.not_equal(trimmed, ""), False))
    return pc.cast(pc.if_else(parsable, trimmed, pa.scalar(None, trimmed.type)), pa.float64())


def _not_finite(name: str, column: pa.Array, limit: Limit):
    def describe(row: int) -> str:
        value = column[row].as_py()
        try:
            finite = math.isfinite(float(value))
        except ValueError:
            finite = False
        if finite:
            return f"column {name!r}: {value!r} is past {limit.what}"
        return f"column {name!r}: not a finite number: {value!r} (leave the field empty for a missing value)"

    return describe


def where(batch: pa.RecordBatch, row: int, fallback: str) -> str:
    """``file:line`` of a row when the reader supplied them, else ``fallback``."""
    meta = batch.schema.metadata or {}
    file = meta.get(b"file", b"").decode() or fallback
    if LINE_COLUMN in batch.schema.names:
        number = batch.column(LINE_COLUMN)[row].as_py()
        return f"{file} row {number}" if meta.get(b"unit") == b"row" else f"{file}:{number}"
    return f"{file}: row {row + 1} of a batch" if file == fallback else file


def _label_values(column: pa.Array, name: str):
    """Labels float64 [n] (bad rows → 0), the bad-row mask, and a describer of a bad row."""
    text = column
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = _as_numbers(column)
    values = np.asarray(pc.cast(column, pa.float64(), safe=False).to_numpy(zero_copy_only=False), dtype=np.float64)
    missing = np.isnan(values)
    bad = missing | ((values != 0) & (values != 1))

    def describe(row: int) -> str:
        raw = text[row].as_py()
        if raw is None or str(raw).strip() == "":
            return f"label {name!r} is missing"
        return f"label {name!r} is {raw!r}, not 0 or 1"

    return np.where(bad, 0.0, values), bad, describe


def column_keys(features: list[FeatureSpec], label: str, group: str | None) -> dict[str, str]:
    """Raw column → the recipe key that names it (for messages about absent columns). A
    feature reading the label column is refused: the model would see the answer."""
    keys = {spec.column: f"data.features ({spec.name})" for spec in features}
    if label in keys:
        raise RecipeError(f"{keys[label]}: reads the label column {label!r}; a feature must not see the label")
    keys[label] = "data.label"
    if group:
        keys[group] = "data.group"
    return keys


def require_columns(names: list[str], columns: dict[str, str], origin: str) -> None:
    """Raises a DataError naming the recipe key of the first of ``columns`` not in ``names``
    (or in it more than once: which one would be read is ambiguous).

    Args:
        names: the columns the input has; columns: raw column → recipe key (``column_keys``).
    """
    names = [n for n in names if n not in (LINE_COLUMN, PROBLEM_COLUMN)]
    for column, key in columns.items():
        if column not in names:
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise DataError(f"{key}: column {column!r} is absent from {origin} (it has: {shown})")
        if names.count(column) > 1:
            raise DataError(f"{key}: column {column!r} appears {names.count(column)} times in {origin}; name it once")


def readable_columns(schema: pa.Schema, features: list[FeatureSpec], label: str, group: str | None,
                     origin: str) -> dict[str, str]:
    """Column → who reads it (``data.features (a), kind categorical``), for the columns of
    ``schema`` that the features, the label and the group read. A column whose Arrow type its
    reader cannot convert (a list read as one value, a struct, a map, a list of lists read as
    a sequence) is a DataError naming ``origin``, its type and what to declare instead."""
    uses = [(spec.column, spec, reads(spec), f"data.features ({spec.name}), {_declared(spec)}") for spec in features]
    uses += [(label, None, pa.float64(), "data.label"), (group, None, pa.string(), "data.group")]
    readers = {}
    for column, spec, target, who in uses:
        if column not in schema.names:
            continue  # no group, or an optional column a file to score lacks
        arrow_type = schema.field(column).type
        hint = unreadable_type(arrow_type, spec, target)
        if hint:
            raise DataError(f"{origin}: column {column!r} ({arrow_type}) cannot be read by {who}; {hint}")
        readers.setdefault(column, who)
    return readers


def _declared(spec: FeatureSpec) -> str:
    """A feature's kind as the recipe declares it (``kind categorical with num_ids``)."""
    extra = " with num_ids" if spec.num_ids else " with transform log_square" if spec.transform == "log_square" else ""
    return f"kind {spec.kind}{extra}"


def raise_or_count(check: RowCheck, batch: pa.RecordBatch, fallback: str, skip: bool) -> int:
    """Raises a DataError for the first bad row, or (skip mode) returns how many are dropped."""
    if check.problem is None:
        return 0
    if not skip:
        raise DataError(f"{where(batch, check.first_bad, fallback)}: {check.problem}")
    return int((~check.keep).sum())
