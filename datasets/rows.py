"""Encoded rows in memory, packed, and their vectorised conversion into a ``Batch``.

A block of n rows is one int32 matrix [n, W]: every field of a row sits in a fixed slot
(floats and int64 group ids stored by their bits, sequences padded to ``max_len`` after
their length). Gathering or scattering a row then moves one contiguous record instead of
one value per column, which is what makes the shuffle buffer cheap: a random row costs a
few cache lines, not one cache miss per feature.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from ctr.batch import Batch, JaggedFeatures
from ctr.datasets.encode import GROUP, LABEL
from ctr.errors import DataError
from ctr.host import memory_bytes
from ctr.schema import Schema

PACK_ROWS = 4096


@dataclass(frozen=True)
class RowLayout:
    """Slots of a packed row (in int32 words).

    Args:
        width: words per row. label: the label's word (float32 bits).
        group: first of the two words of the int64 group id, or None.
        dense: first word of the Nd numeric features (float32 bits); categorical: first of
            the Fc single-valued ids.
        sequences: name → (word of its length, first of its id words, ``max_len``).
        keys, kinds: the sparse features in schema order (``JaggedFeatures.keys``).
    """

    width: int
    label: int
    group: int | None
    dense: tuple[int, int]
    categorical: tuple[int, int]
    sequences: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    keys: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()

    @classmethod
    def of(cls, schema: Schema, has_group: bool) -> RowLayout:
        words = 1
        group = None
        if has_group:
            group, words = words, words + 2
        dense = (words, words + len(schema.dense_features))
        words = dense[1]
        num_cat = sum(1 for f in schema.sparse_features if f.spec.kind == "categorical")
        categorical = (words, words + num_cat)
        words = categorical[1]
        sequences = {}
        for info in schema.sparse_features:
            if info.spec.kind == "sequence":
                sequences[info.spec.name] = (words, words + 1, info.spec.max_len)
                words += 1 + info.spec.max_len
        keys = tuple(f.spec.name for f in schema.sparse_features)
        kinds = tuple(f.spec.kind for f in schema.sparse_features)
        return cls(words, 0, group, dense, categorical, sequences, keys, kinds)


def check_rows_fit(layout: RowLayout, rows: int, holder: str, batch: int = 1, key: str | None = None) -> None:
    """Refuses ``rows`` packed rows of ``layout`` (what ``holder`` keeps in memory) that need
    more than this machine's memory, naming the widest sequence (a max_len in the billions
    ended in numpy's allocation error), and ``key``, the setting that sizes ``holder``, where
    a ``batch`` of rows would fit."""
    needed, memory = 4 * rows * layout.width, memory_bytes()
    if needed <= memory:
        return
    widest = max(layout.sequences.items(), key=lambda item: item[1][2], default=None)
    cause = f" (the widest slot: sequence {widest[0]!r}, max_len {widest[1][2]})" if widest else ""
    fix = f"; lower {key}" if key and 4 * batch * layout.width <= memory else ""
    raise DataError(f"{rows:,} packed rows of {layout.width:,} int32 words{cause}, what {holder} holds, need "
                    f"{needed / 2**30:.3g} GiB, more than this machine's {memory / 2**30:.1f} GiB{fix}")


@dataclass
class RowBlock:
    """n packed rows: ``data`` int32 [n, layout.width]."""

    data: np.ndarray

    @property
    def rows(self) -> int:
        return self.data.shape[0]

    def take(self, index: np.ndarray | slice) -> RowBlock:
        """Rows ``index``: an int array gathers a copy, a slice gives a view."""
        if isinstance(index, slice):
            return RowBlock(self.data[index])
        return RowBlock(np.take(self.data, index, axis=0))

    def put(self, index: np.ndarray | slice, other: RowBlock) -> None:
        """Writes ``other``'s rows into rows ``index`` (whole rows move as single items)."""
        if isinstance(index, slice):
            self.data[index] = other.data
            return
        record = np.dtype((np.void, self.data.dtype.itemsize * self.data.shape[1]))
        self.data.view(record).reshape(-1)[index] = np.ascontiguousarray(other.data).view(record).reshape(-1)

    def empty_like(self, rows: int) -> RowBlock:
        return RowBlock(np.empty((rows, self.data.shape[1]), dtype=self.data.dtype))

    @staticmethod
    def concat(blocks: list[RowBlock]) -> RowBlock:
        return blocks[0] if len(blocks) == 1 else RowBlock(np.concatenate([b.data for b in blocks]))


def pack(table: pa.Table | pa.RecordBatch, layout: RowLayout, schema: Schema) -> RowBlock:
    """Packs encoded Arrow rows (no per-row Python)."""
    n = table.num_rows
    data = np.empty((n, layout.width), dtype=np.int32)
    columns = [(layout.label, _words(table.column(LABEL), np.float32))]
    if layout.group is not None:
        groups = table.column(GROUP).to_numpy().astype(np.int64, copy=False).view(np.int32).reshape(-1, 2)
        columns += [(layout.group, groups[:, 0]), (layout.group + 1, groups[:, 1])]
    for j, info in enumerate(schema.dense_features):
        columns.append((layout.dense[0] + j, _words(table.column(info.spec.name), np.float32)))
    cats = [f.spec.name for f in schema.sparse_features if f.spec.kind == "categorical"]
    for j, name in enumerate(cats):
        columns.append((layout.categorical[0] + j, table.column(name).to_numpy()))
    # row chunks that stay in cache while every column is written into them
    for start in range(0, n, PACK_ROWS):
        end = min(start + PACK_ROWS, n)
        for word, values in columns:
            data[start:end, word] = values[start:end]
    for name, (length_word, first, width) in layout.sequences.items():
        data[:, length_word] = _pad_into(table.column(name), data[:, first : first + width])
    return RowBlock(data)


def _words(column: pa.Array | pa.ChunkedArray, dtype) -> np.ndarray:
    return column.to_numpy().astype(dtype, copy=False).view(np.int32)


def _pad_into(column: pa.Array | pa.ChunkedArray, out: np.ndarray) -> np.ndarray:
    """Writes a list<int32> column into ``out`` [n, L] (0-padded on the right); returns lengths."""
    lists = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = lists.offsets.to_numpy().astype(np.int64)
    values = lists.values.to_numpy()[offsets[0] : offsets[-1]]
    lengths = np.diff(offsets)
    if lengths.size and lengths.max() > out.shape[1]:
        raise ValueError(f"a sequence of {lengths.max()} items exceeds max_len {out.shape[1]}")
    out[:] = 0
    row = np.repeat(np.arange(lengths.size), lengths)
    out[row, np.arange(values.size) - np.repeat(offsets[:-1] - offsets[0], lengths)] = values
    return lengths


class BatchBuilder:
    """Turns a block of packed rows into a ``Batch`` (the block is the whole batch)."""

    def __init__(self, layout: RowLayout):
        self.layout = layout
        self._offsets: dict[tuple[int, torch.device], torch.Tensor] = {}

    def build(self, block: RowBlock) -> Batch:
        if not self.layout.sequences:
            return self.build_fixed(torch.from_numpy(block.data))
        data, layout = block.data, self.layout
        labels = np.ascontiguousarray(data[:, layout.label]).view(np.float32)
        groups = None
        if layout.group is not None:
            groups = torch.from_numpy(np.ascontiguousarray(data[:, layout.group : layout.group + 2]).view(np.int64).reshape(-1))
        dense = np.ascontiguousarray(data[:, layout.dense[0] : layout.dense[1]]).view(np.float32)
        values, offsets = self._jagged(data)
        sparse = JaggedFeatures(list(layout.keys), torch.from_numpy(values), torch.from_numpy(offsets))
        return Batch(dense=torch.from_numpy(dense), sparse=sparse, labels=torch.from_numpy(labels), groups=groups)

    def build_fixed(self, data: torch.Tensor) -> Batch:
        """A batch of rows without sequences from packed rows ``data`` int32 [n, W] on any
        device, built there with torch ops (no host round trip for a device tensor)."""
        layout = self.layout
        labels = data[:, layout.label].contiguous().view(torch.float32)
        groups = None
        if layout.group is not None:
            pair = data[:, layout.group : layout.group + 2]  # a one-row slice is contiguous at an odd offset
            groups = pair.clone(memory_format=torch.contiguous_format).view(torch.int64).reshape(-1)
        dense = data[:, layout.dense[0] : layout.dense[1]].contiguous().view(torch.float32)
        values = data[:, layout.categorical[0] : layout.categorical[1]].t().to(torch.int64).reshape(-1)
        sparse = JaggedFeatures(list(layout.keys), values, self._single_offsets(values.numel(), data.device), single=True)
        return Batch(dense=dense, sparse=sparse, labels=labels, groups=groups)

    def _single_offsets(self, count: int, device: torch.device) -> torch.Tensor:
        """``0, 1, ..., count`` (one id per bag), made once per size and device."""
        key = (count, device)
        if key not in self._offsets:
            self._offsets[key] = torch.arange(count + 1, dtype=torch.int64, device=device)
        return self._offsets[key]

    def _jagged(self, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        layout, n = self.layout, data.shape[0]
        pieces, lengths = [], []
        cat = layout.categorical[0]
        for key, kind in zip(layout.keys, layout.kinds):
            if kind == "categorical":
                pieces.append(data[:, cat].astype(np.int64))
                lengths.append(np.ones(n, dtype=np.int64))
                cat += 1
                continue
            length_word, first, width = layout.sequences[key]
            seq_lengths = data[:, length_word].astype(np.int64)
            ids = data[:, first : first + width]
            pieces.append(ids[np.arange(width) < seq_lengths[:, None]].astype(np.int64))
            lengths.append(seq_lengths)
        all_lengths = np.concatenate(lengths)
        offsets = np.zeros(all_lengths.shape[0] + 1, dtype=np.int64)
        np.cumsum(all_lengths, out=offsets[1:])
        return np.concatenate(pieces), offsets
