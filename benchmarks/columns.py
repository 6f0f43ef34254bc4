"""Encoded splits as numpy columns, for the peer benchmarks (DeepCTR-Torch takes per-feature
arrays); ``BatchBuilder`` gathers rows of them into ctr's ``Batch``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ctr.batch import Batch, JaggedFeatures
from ctr.datasets.encode import GROUP, LABEL
from ctr.schema import Schema


@dataclass
class Columns:
    """A block of encoded rows.

    Args:
        labels: float32 [n]; groups: int64 [n] or None.
        dense: float32 [n, Nd] numeric features in schema order.
        categorical: int32 [n, Fc] single-valued features.
        sequences: name → (values int32 [M], offsets int64 [n + 1]).
    """

    labels: np.ndarray
    groups: np.ndarray | None
    dense: np.ndarray
    categorical: np.ndarray
    sequences: dict[str, tuple[np.ndarray, np.ndarray]]

    @property
    def rows(self) -> int:
        return self.labels.shape[0]


def columns_from_table(table: pa.Table, schema: Schema) -> Columns:
    """Converts an encoded Arrow table into numpy columns (no per-row Python)."""
    dense_names = [f.spec.name for f in schema.dense_features]
    cat_names = [f.spec.name for f in schema.sparse_features if f.spec.kind == "categorical"]
    n = table.num_rows
    dense = np.empty((n, len(dense_names)), dtype=np.float32)
    for j, name in enumerate(dense_names):
        dense[:, j] = table.column(name).to_numpy()
    categorical = np.empty((n, len(cat_names)), dtype=np.int32)
    for j, name in enumerate(cat_names):
        categorical[:, j] = table.column(name).to_numpy()
    sequences = {}
    for info in schema.sparse_features:
        if info.spec.kind == "sequence":
            lists = table.column(info.spec.name).combine_chunks()
            offsets = lists.offsets.to_numpy().astype(np.int64)
            values = lists.values.to_numpy()
            sequences[info.spec.name] = (values[offsets[0] : offsets[-1]], offsets - offsets[0])
    groups = table.column(GROUP).to_numpy() if GROUP in table.column_names else None
    return Columns(table.column(LABEL).to_numpy(), groups, dense, categorical, sequences)


def read_columns(files: list[Path], schema: Schema) -> Columns:
    """Reads shards into one block of columns."""
    tables = [pq.read_table(f) for f in files]
    return columns_from_table(pa.concat_tables(tables) if len(tables) != 1 else tables[0], schema)


class BatchBuilder:
    """Gathers rows ``index`` of a Columns block into a ``Batch`` (numpy fancy indexing)."""

    def __init__(self, schema: Schema):
        self.keys = [f.spec.name for f in schema.sparse_features]
        self.kinds = [f.spec.kind for f in schema.sparse_features]
        self.has_sequences = "sequence" in self.kinds

    def build(self, cols: Columns, index: np.ndarray) -> Batch:
        if not self.has_sequences:
            values = cols.categorical[index].T.reshape(-1).astype(np.int64)
            offsets = np.arange(values.shape[0] + 1, dtype=np.int64)
        else:
            values, offsets = self._jagged(cols, index)
        sparse = JaggedFeatures(self.keys, torch.from_numpy(values), torch.from_numpy(offsets),
                                single=not self.has_sequences)
        groups = None if cols.groups is None else torch.from_numpy(cols.groups[index])
        return Batch(
            dense=torch.from_numpy(cols.dense[index]),
            sparse=sparse,
            labels=torch.from_numpy(cols.labels[index]),
            groups=groups,
        )

    def _jagged(self, cols: Columns, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pieces, lengths = [], []
        cat = 0
        for key, kind in zip(self.keys, self.kinds):
            if kind == "categorical":
                pieces.append(cols.categorical[index, cat].astype(np.int64))
                lengths.append(np.ones(index.shape[0], dtype=np.int64))
                cat += 1
                continue
            values, offsets = cols.sequences[key]
            starts, seq_lengths = offsets[index], offsets[index + 1] - offsets[index]
            total = int(seq_lengths.sum())
            shift = np.repeat(starts - (np.cumsum(seq_lengths) - seq_lengths), seq_lengths)
            pieces.append(values[shift + np.arange(total)].astype(np.int64))
            lengths.append(seq_lengths)
        all_lengths = np.concatenate(lengths)
        offsets = np.zeros(all_lengths.shape[0] + 1, dtype=np.int64)
        np.cumsum(all_lengths, out=offsets[1:])
        return np.concatenate(pieces), offsets
