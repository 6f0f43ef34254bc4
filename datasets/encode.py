"""Pass two of preprocessing: raw record batches → encoded columns, with per-feature tallies."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ctr.datasets.transforms import (
    base_numeric,
    categorical_tokens,
    finish_numeric,
    numeric_values,
    sequence_tokens,
)
from ctr.datasets.vocab import IdentityVocabulary, Vocabulary
from ctr.schema import GROUP_COLUMN as GROUP
from ctr.schema import LABEL_COLUMN as LABEL
from ctr.schema import FeatureSpec, NumericStats


@dataclass
class Tally:
    """Counts for the preparation report of one split."""

    rows: int = 0
    positives: int = 0
    values: Counter = field(default_factory=Counter)
    oov: Counter = field(default_factory=Counter)
    missing: Counter = field(default_factory=Counter)


class Encoder:
    """Encodes record batches with fitted vocabularies and numeric statistics.

    Output columns: ``__label__`` float32, ``__group__`` int64 (if a group column is set),
    one float32 column per numeric feature, int32 per categorical, list<int32> per sequence.
    """

    def __init__(
        self,
        features: list[FeatureSpec],
        table_of: dict[str, str],
        vocabs: dict[str, Vocabulary | IdentityVocabulary],
        numeric: dict[str, NumericStats],
        group: str | None,
    ):
        self.features = features
        self.table_of = table_of
        self.vocabs = vocabs
        self.numeric = numeric
        self.group = group

    def encode(self, batch: pa.RecordBatch, labels: np.ndarray, tally: Tally, where: str) -> pa.RecordBatch:
        columns: dict[str, pa.Array] = {LABEL: pa.array(labels.astype(np.float32))}
        if self.group is not None:
            columns[GROUP] = pa.array(group_ids(batch.column(self.group)))
        for spec in self.features:
            columns[spec.name] = self._encode_feature(spec, batch.column(spec.column), tally, where)
        tally.rows += batch.num_rows
        tally.positives += int(labels.sum())
        return pa.RecordBatch.from_pydict(columns)

    def _encode_feature(self, spec: FeatureSpec, column: pa.Array, tally: Tally, where: str) -> pa.Array:
        tally.missing[spec.name] += column.null_count
        if spec.kind == "numeric":
            raw = numeric_values(column, spec, where)
            tally.missing[spec.name] += int(np.isnan(raw).sum()) - column.null_count
            tally.values[spec.name] += raw.size
            return pa.array(finish_numeric(base_numeric(raw, spec.transform), spec, self.numeric[spec.name]))
        vocab = self.vocabs[self.table_of[spec.name]]
        if spec.kind == "categorical":
            identity = isinstance(vocab, IdentityVocabulary)
            ids, oov = vocab.encode(column if identity else categorical_tokens(column, spec))
            tally.values[spec.name] += ids.size
            tally.oov[spec.name] += oov
            return pa.array(ids)
        lists = sequence_tokens(column, spec)
        ids, oov = vocab.encode(lists.tokens)
        tally.values[spec.name] += ids.size
        tally.oov[spec.name] += oov
        return pa.ListArray.from_arrays(pa.array(lists.offsets.astype(np.int32)), pa.array(ids))


def group_ids(column: pa.Array) -> np.ndarray:
    """A stable int64 id per distinct raw value (a hash), for group AUC."""
    text = column if pa.types.is_string(column.type) else pc.cast(column, pa.string())
    values = text.fill_null("").to_numpy(zero_copy_only=False).astype(object)
    return pd.util.hash_array(values).view(np.int64)
