"""The training and evaluation loader: encoded shards → ``Batch`` stream.

Rows are gathered with numpy fancy indexing (no per-row Python), shuffled by a seeded
permutation per epoch, split across data-parallel ranks, and prepared ahead by a
background thread.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

from ctr.batch import Batch
from ctr.datasets.columns import BatchBuilder, Columns, read_columns
from ctr.datasets.shards import shard_files
from ctr.errors import DataError
from ctr.schema import Schema


class BatchLoader:
    """Iterates batches of one encoded split.

    Args:
        folder: the split's shard folder; schema: its fitted schema.
        batch_size: rows per batch; shuffle: shuffle rows each epoch (seeded by seed, epoch).
        drop_last: drop a last, smaller batch.
        rank, world_size: this process's share of each epoch (equal batch counts per rank).
        prefetch: batches built ahead in a background thread (0 = build inline).

    Example:
        >>> loader = BatchLoader(prepared.split_dir("train"), prepared.schema, 4096)  # doctest: +SKIP
        >>> batch = next(iter(loader))  # doctest: +SKIP
    """

    def __init__(
        self,
        folder: Path,
        schema: Schema,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 2,
    ):
        files = shard_files(folder)
        if not files:
            raise DataError(f"{folder}: no encoded rows in this split")
        self.columns: Columns = read_columns(files, schema)
        self.builder = BatchBuilder(schema)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.prefetch = prefetch
        self.epoch = 0

    @property
    def rows(self) -> int:
        """Rows this rank sees per epoch."""
        return self.columns.rows // self.world_size if self.world_size > 1 else self.columns.rows

    def __len__(self) -> int:
        full, rest = divmod(self.rows, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[Batch]:
        order = self._order(self.epoch)
        self.epoch += 1
        starts = range(0, len(self) * self.batch_size, self.batch_size)
        batches = (self.builder.build(self.columns, order[s : s + self.batch_size]) for s in starts)
        return _prefetched(batches, self.prefetch) if self.prefetch else batches

    def _order(self, epoch: int) -> np.ndarray:
        n = self.columns.rows
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        if self.world_size > 1:
            order = order[self.rank : self.rows * self.world_size : self.world_size]
        return order


def _prefetched(items: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """Runs ``items`` in a daemon thread, ``depth`` ahead; re-raises its errors here.

    The thread stops when the consumer stops early (the generator is closed).
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done, stop = object(), threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as err:  # handed to the consumer, which re-raises it
            put(err)
        put(done)

    threading.Thread(target=produce, daemon=True).start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
