"""Token counting and vocabularies: raw tokens → ids, with reserved padding and OOV ids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ctr.errors import DataError
from ctr.schema import PAD_ID, FeatureSpec

MERGE_EVERY = 16


class TokenCounter:
    """Counts tokens of a string column over record batches; memory ∝ distinct tokens."""

    def __init__(self) -> None:
        self._parts: list[pa.Table] = []
        self._merged: pa.Table | None = None

    def add(self, tokens: pa.Array) -> None:
        """Counts ``tokens`` (a string array; nulls are not counted)."""
        counted = pc.value_counts(tokens.drop_null() if tokens.null_count else tokens)
        self._parts.append(pa.table({"token": counted.field("values"), "count": counted.field("counts")}))
        if len(self._parts) >= MERGE_EVERY:
            self._merge()

    def result(self) -> pa.Table:
        """A table (token, count) with one row per distinct token."""
        self._merge()
        if self._merged is None:
            return pa.table({"token": pa.array([], pa.string()), "count": pa.array([], pa.int64())})
        return self._merged

    def _merge(self) -> None:
        if not self._parts:
            return
        tables = self._parts + ([self._merged] if self._merged is not None else [])
        combined = pa.concat_tables(tables).group_by("token").aggregate([("count", "sum")])
        self._merged = combined.rename_columns(["token", "count"])
        self._parts = []


class Vocabulary:
    """Tokens kept for one embedding table, in decreasing count order.

    Ids: 0 = padding, 1..oov_buckets = OOV (tokens hashed into buckets), then known tokens.
    """

    def __init__(self, tokens: pa.Array, counts: np.ndarray, oov_buckets: int):
        self.tokens = tokens
        self.token_counts = counts
        self.oov_buckets = oov_buckets
        self.first_id = 1 + oov_buckets

    @classmethod
    def fit(cls, counted: pa.Table, spec: FeatureSpec) -> Vocabulary:
        """Keeps tokens seen at least ``min_count`` times, at most ``max_vocab`` of them."""
        kept = counted.filter(pc.greater_equal(counted["count"], spec.min_count))
        order = pc.sort_indices(kept, sort_keys=[("count", "descending"), ("token", "ascending")])
        kept = kept.take(order)
        if spec.max_vocab is not None:
            kept = kept.slice(0, spec.max_vocab)
        return cls(kept["token"].combine_chunks(), kept["count"].to_numpy(), spec.oov_buckets)

    @property
    def size(self) -> int:
        """Rows its embedding table needs (padding + OOV + known tokens)."""
        return self.first_id + len(self.tokens)

    def encode(self, tokens: pa.Array) -> tuple[np.ndarray, int]:
        """Maps tokens to ids int32 [n]; nulls (padding) → 0. Returns the ids and the OOV count."""
        index = self._positions(tokens)
        known = index >= 0
        ids = np.where(known, index, 0).astype(np.int32) + self.first_id
        present = tokens.is_valid().to_numpy(zero_copy_only=False)
        unknown = present & ~known
        ids[~present] = PAD_ID
        if unknown.any():
            ids[unknown] = self._oov_ids(tokens.filter(pa.array(unknown)))
        return ids, int(unknown.sum())

    def _positions(self, tokens: pa.Array) -> np.ndarray:
        """Position of each token in the vocabulary, -1 if absent (int64 [n]).

        Looking tokens up builds a hash table of the value set. For a vocabulary larger than
        the batch, the batch's distinct tokens form the value set and the vocabulary is
        probed against it instead, which is much cheaper than hashing the whole vocabulary
        for every batch.
        """
        if len(self.tokens) <= len(tokens):
            return pc.index_in(tokens, value_set=self.tokens).fill_null(-1).to_numpy(zero_copy_only=False)
        encoded = pc.dictionary_encode(tokens)
        distinct = encoded.dictionary
        where = pc.index_in(self.tokens, value_set=distinct).to_numpy(zero_copy_only=False)
        found = ~np.isnan(where) if where.dtype.kind == "f" else np.ones(where.shape, dtype=bool)
        lookup = np.full(len(distinct), -1, dtype=np.int64)
        lookup[where[found].astype(np.int64)] = np.flatnonzero(found)
        codes = encoded.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        positions = lookup[codes]
        if encoded.indices.null_count:
            positions[~encoded.indices.is_valid().to_numpy(zero_copy_only=False)] = -1
        return positions

    def _oov_ids(self, tokens: pa.Array) -> np.ndarray:
        if self.oov_buckets == 1:
            return np.ones(len(tokens), dtype=np.int32)
        hashed = pd.util.hash_array(tokens.to_numpy(zero_copy_only=False).astype(object))
        return (1 + hashed % np.uint64(self.oov_buckets)).astype(np.int32)

    def counts_by_id(self) -> np.ndarray:
        """Training count of every id [size] (0 for padding and OOV ids)."""
        counts = np.zeros(self.size, dtype=np.int64)
        counts[self.first_id :] = self.token_counts
        return counts

    def to_table(self) -> pa.Table:
        return pa.table({"token": self.tokens, "count": pa.array(self.token_counts, pa.int64())})


def integer_ids(column: pa.Array, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The int64 ids [n] of an id column and its validity mask [n] (False = missing); text
    may have blanks around an id, a plus sign and a zero fraction (``" 3 "``, ``"+3"``,
    ``"3.0"``), as ``check_rows`` lets through, and is read exactly (2**63 - 1 too)."""
    try:
        column = _as_int64(column)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(f"feature {name!r} has num_ids set but its column holds non-integer values") from None
    present = column.is_valid().to_numpy(zero_copy_only=False)
    return column.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False), present


def _as_int64(column: pa.Array) -> pa.Array:
    if pa.types.is_integer(column.type):
        return column
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        trimmed = pc.utf8_trim_whitespace(column)
        column = pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, trimmed.type), trimmed)
        try:
            return pc.cast(column, pa.int64())
        except pa.ArrowInvalid:  # "+3", "3.0": cut as text (float64 would round 2**63 - 1 up)
            column = pc.replace_substring_regex(column, pattern=r"^\+|\.0*$", replacement="")
    return pc.cast(column, pa.int64())


class IdCounter:
    """Counts the ids of a ``num_ids`` feature over record batches; memory ∝ ``num_ids``."""

    def __init__(self, num_ids: int, name: str):
        self.counts = np.zeros(num_ids, dtype=np.int64)
        self.name = name

    def add(self, column: pa.Array) -> None:
        ids, present = integer_ids(column, self.name)
        ids = ids[present & (ids >= 0) & (ids < self.counts.size)]
        seen = np.bincount(ids)
        self.counts[: seen.size] += seen


class IdentityVocabulary:
    """The vocabulary of a ``num_ids`` feature: id ``k`` is row ``first_id + k``.

    Same interface as ``Vocabulary``; ids outside ``[0, num_ids)`` are OOV, missing ones
    padding.
    """

    def __init__(self, counter: IdCounter, spec: FeatureSpec):
        self.id_counts = counter.counts
        self.oov_buckets = spec.oov_buckets
        self.first_id = 1 + spec.oov_buckets
        self.name = spec.name

    @property
    def size(self) -> int:
        return self.first_id + self.id_counts.size

    def encode(self, column: pa.Array) -> tuple[np.ndarray, int]:
        """Maps ids to rows int32 [n] (missing → 0, out of range → OOV); returns them and the OOV count."""
        ids, present = integer_ids(column, self.name)
        known = present & (ids >= 0) & (ids < self.id_counts.size)
        rows = np.where(known, ids + self.first_id, PAD_ID).astype(np.int32)
        unknown = present & ~known
        if unknown.any():
            rows[unknown] = 1 + (ids[unknown] % self.oov_buckets)
        return rows, int(unknown.sum())

    def counts_by_id(self) -> np.ndarray:
        counts = np.zeros(self.size, dtype=np.int64)
        counts[self.first_id :] = self.id_counts
        return counts

    def to_table(self) -> pa.Table:
        return pa.table({"num_ids": pa.array([self.id_counts.size], pa.int64())})
