"""Encoded splits as numpy columns, for the peer benchmarks (DeepCTR-Torch takes per-feature
arrays); ``packed_rows`` hands the same rows to ctr's own batch builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ctr.datasets.encode import GROUP, LABEL
from ctr.datasets.rows import BatchBuilder, RowBlock, RowLayout, pack
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


def packed_rows(cols: Columns, schema: Schema) -> tuple[RowBlock, BatchBuilder]:
    """The block's rows packed as ctr's loader packs them, and ctr's builder of batches from
    them (``builder.build(rows.take(index))``). Single-valued features only."""
    if cols.sequences or cols.groups is not None:
        raise ValueError("packed_rows takes blocks without sequences or groups")
    table = {LABEL: cols.labels}
    table.update({f.spec.name: cols.dense[:, j] for j, f in enumerate(schema.dense_features)})
    table.update({f.spec.name: cols.categorical[:, j] for j, f in enumerate(schema.sparse_features)})
    layout = RowLayout.of(schema, has_group=False)
    return pack(pa.table(table), layout, schema), BatchBuilder(layout)
