"""Raw column → what a feature encodes: string tokens, token lists, or floats."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ctr.errors import DataError
from ctr.schema import FeatureSpec, NumericStats

MISSING_TOKEN = ""
LOG_SQUARE_ABOVE = 2.0  # log_square is floor(ln(x)^2) of x above it, round(x) of the others


@dataclass
class TokenLists:
    """Sequence tokens: flat string ``tokens`` [N] and ``offsets`` int64 [rows + 1]."""

    tokens: pa.Array
    offsets: np.ndarray


def numeric_values(column: pa.Array, spec: FeatureSpec, where: str) -> np.ndarray:
    """Raw numbers float64 [n] (NaN = missing); text that is not a number is a DataError."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        try:
            return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)  # the common case
        except pa.ArrowInvalid:
            column = pc.utf8_trim_whitespace(column)
        column = pc.if_else(pc.equal(column, ""), pa.scalar(None, column.type), column)
        try:
            column = pc.cast(column, pa.float64())
        except pa.ArrowInvalid as err:
            raise DataError(f"{where}: column {spec.column!r}: not a number: {_first_bad(column)}") from err
    # safe=False: an int64 past 2**53 (a nanosecond time) becomes its nearest float, not an error
    values = pc.cast(column, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float64)


def reads(spec: FeatureSpec | None) -> pa.DataType:
    """The type a raw column is converted to: float64 for a numeric feature (and a
    ``log_square`` categorical) or the label (``spec`` None), int64 for ``num_ids``, else
    string (the tokens of a categorical feature, the items of a sequence)."""
    if spec is None or spec.kind == "numeric" or spec.transform == "log_square":
        return pa.float64()
    return pa.int64() if spec.num_ids else pa.string()


def unreadable_type(arrow_type: pa.DataType, spec: FeatureSpec | None, target: pa.DataType) -> str | None:
    """What to declare or store instead when a raw column of ``arrow_type`` cannot feed
    feature ``spec`` (None: the label or the group) as ``target`` (``reads``); None when it
    can. Arrow refuses a conversion it lacks whatever the values, so an empty array tells
    (a list, struct or map column read as one value, a list of lists read as a sequence)."""
    if spec is not None and spec.kind == "sequence" and _is_list(arrow_type):
        return None if _casts(arrow_type.value_type, pa.string()) else "store it as a list of strings or numbers"
    if _casts(arrow_type, target):
        return None
    if spec is not None and _is_list(arrow_type) and _casts(arrow_type.value_type, pa.string()):
        return "declare kind: sequence"
    if spec is not None and spec.kind == "numeric" and _casts(arrow_type, pa.string()):
        return "declare kind: categorical, or store it as numbers"
    return "store it as strings or numbers" if target == pa.string() else "store it as numbers"


def _is_list(arrow_type: pa.DataType) -> bool:
    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type)


def _casts(arrow_type: pa.DataType, target: pa.DataType) -> bool:
    try:
        pc.cast(pa.array([], arrow_type), target)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return False
    return True


def base_numeric(values: np.ndarray, transform: str) -> np.ndarray:
    """The fit-free part of a numeric transform (NaN stays NaN)."""
    if transform == "log1p":
        return np.log1p(np.maximum(values, 0.0))
    if transform == "log_square":
        safe = np.where(values > LOG_SQUARE_ABOVE, values, LOG_SQUARE_ABOVE)
        return np.where(values > LOG_SQUARE_ABOVE, np.floor(np.log(safe) ** 2), np.round(values))
    return values


def finish_numeric(values: np.ndarray, spec: FeatureSpec, stats: NumericStats) -> np.ndarray:
    """Applies the fitted part (standardize, quantile) and fills missing values; float32 [n].
    A standardized value past the float32 range (a value far outside the training spread)
    is kept at its bound, as a value read as is must lie inside it."""
    if spec.transform == "standardize":
        bound = float(np.finfo(np.float32).max)
        values = np.clip((values - stats.mean) / (stats.std or 1.0), -bound, bound)
    elif spec.transform == "quantile":
        buckets = np.searchsorted(np.asarray(stats.boundaries), values, side="right")
        values = np.where(np.isnan(values), np.nan, buckets / max(len(stats.boundaries), 1))
    return np.nan_to_num(values, nan=spec.fill).astype(np.float32)


def categorical_tokens(column: pa.Array, spec: FeatureSpec) -> pa.Array:
    """String tokens [n] of a single-valued feature; a missing value is its own token.

    With ``transform: log_square`` a numeric column becomes bucket tokens floor(ln(x)^2)
    (round(x) for x <= 2). Its rows come checked by ``check_rows``, which refuses a round(x)
    past int64 (a row error naming file and line, or a skipped row): the cast cannot fail.
    """
    if spec.transform == "log_square":
        values = numeric_values(column, spec, f"feature {spec.name}")
        buckets = base_numeric(values, "log_square")
        column = pc.cast(pa.array(buckets, from_pandas=True), pa.int64())
    tokens = column if pa.types.is_string(column.type) else pc.cast(column, pa.string())
    return tokens.fill_null(MISSING_TOKEN) if tokens.null_count else tokens


def sequence_tokens(column: pa.Array, spec: FeatureSpec) -> TokenLists:
    """Token lists of a sequence feature, each cut to its last ``max_len`` items.

    The column is either text split by ``spec.splitter`` or already a list column; empty
    items (``a^^b``) and null items of a list are dropped.
    """
    if pa.types.is_fixed_size_list(column.type):
        column = column.cast(pa.list_(column.type.value_type))
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        lists = column
    else:
        text = column if pa.types.is_string(column.type) else pc.cast(column, pa.string())
        lists = pc.split_pattern(text.fill_null(""), spec.splitter)
    lists = lists.fill_null([]) if lists.null_count else lists
    flat = pc.cast(pc.list_flatten(lists), pa.string())
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    keep = pc.fill_null(pc.not_equal(flat, ""), False).to_numpy(zero_copy_only=False)  # empty and null items go
    row = np.repeat(np.arange(len(lengths)), lengths)
    lengths = np.bincount(row[keep], minlength=len(lengths)).astype(np.int64)
    flat = flat.filter(pa.array(keep))
    ends = np.cumsum(lengths)
    position_from_end = np.repeat(ends, lengths) - np.arange(ends[-1] if len(ends) else 0)
    recent = position_from_end <= spec.max_len
    kept = np.minimum(lengths, spec.max_len)
    offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
    return TokenLists(flat.filter(pa.array(recent)), offsets)


def _first_bad(column: pa.Array) -> str:
    for value in column.to_pylist():
        if value is None:
            continue
        try:
            float(value)
        except ValueError:
            return repr(value)
    return "?"
