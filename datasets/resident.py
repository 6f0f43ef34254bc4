"""``data.on_device``: a split held whole in the training device's memory.

At Criteo scale a GPU trains faster than host threads can read, shuffle and copy rows. This
loader packs the split once (the same packed rows as the streaming loader), moves them to the
device, and serves each batch as a gather of rows there: a seeded permutation per epoch
(uniform shuffling, like a shuffle buffer larger than the split) and the batch built with
torch ops on the device. Memory: 4 bytes per packed word per row (about 160 bytes a
Criteo row). Splits with sequence features need the streaming loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
import torch

from ctr.batch import Batch
from ctr.datasets.encode import GROUP
from ctr.datasets.loader import keeps_last
from ctr.datasets.position import Position
from ctr.datasets.rows import BatchBuilder, RowLayout, pack
from ctr.datasets.shards import shard_files
from ctr.errors import DataError, RecipeError
from ctr.schema import Schema


class ResidentLoader(Position):
    """Iterates batches of one encoded split kept in ``device`` memory.

    Args:
        folder, schema, batch_size, shuffle, seed, drop_last, min_rows, rank, world_size: as
            ``BatchLoader`` (this rank's share is a contiguous slice of the split's rows).
        device: where the rows live and the batches are built.

    Its position is saved in checkpoints, as ``BatchLoader``'s.

    Example:
        >>> loader = ResidentLoader(prepared.split_dir("train"), prepared.schema, 65536, "cuda", shuffle=True)  # doctest: +SKIP
    """

    def __init__(self, folder: Path, schema: Schema, batch_size: int, device: torch.device | str,
                 shuffle: bool = False, seed: int = 0, drop_last: bool = False, min_rows: int = 0, rank: int = 0,
                 world_size: int = 1):
        super().__init__()
        files = shard_files(folder)
        if not files:
            raise DataError(f"{folder}: no encoded rows in this split")
        layout = RowLayout.of(schema, GROUP in pq.ParquetFile(files[0]).schema_arrow.names)
        if layout.sequences:
            raise RecipeError("data.on_device: sequence features need the streaming loader; set data.on_device: false")
        rows = np.concatenate([pack(pq.read_table(file), layout, schema).data for file in files])
        share = rows.shape[0] // world_size
        self.device = torch.device(device)
        self.data = torch.from_numpy(rows[rank * share : (rank + 1) * share]).to(self.device)
        self.builder = BatchBuilder(layout)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.drop_last, self.min_rows = drop_last, min_rows

    @property
    def rows(self) -> int:
        return self.data.shape[0]

    def __len__(self) -> int:
        full, rest = divmod(self.rows, self.batch_size)
        return full + (1 if rest and keeps_last(rest, self.drop_last, self.min_rows) else 0)

    def __iter__(self) -> Iterator[Batch]:
        """An epoch's batches; the pass begins at the first batch (as ``BatchLoader``'s)."""
        epoch, skip = self._begin_pass()
        yield from self._counted(self._pass(epoch, skip))

    def _pass(self, epoch: int, skip: int) -> Iterator[Batch]:
        """The batches of ``epoch`` after its first ``skip``."""
        order = None
        if self.shuffle:
            generator = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.rows, generator=generator, device=self.device)
        for start in range(skip * self.batch_size, len(self) * self.batch_size, self.batch_size):
            end = min(start + self.batch_size, self.rows)
            block = self.data[start:end] if order is None else self.data.index_select(0, order[start:end])
            yield self.builder.build_fixed(block)

    def close(self) -> None:
        """Nothing runs in the background; here for the loader interface."""
