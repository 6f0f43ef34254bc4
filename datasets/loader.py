"""The training and evaluation loader: encoded parquet shards → a stream of ``Batch``.

Memory is bounded by the shuffle buffer, not by the split: the loader reads one parquet row
group at a time. For training, each epoch reads the row groups in a seeded random order and
mixes rows through a shuffle buffer of ``shuffle_buffer`` rows (a split that fits in the
buffer is shuffled uniformly). Evaluation reads in file order, so metrics are reproducible.
Every data-parallel rank gets an equal, disjoint share of rows, hence equal batch counts;
with ``split_batches`` each rank instead takes its part of every batch of the one-process
order (a distributed run then steps on exactly the batches of a one-process run).
All conversions are vectorised numpy (no per-row Python). With ``prefetch`` > 0 two
background threads work ahead: one reads and decodes row groups, the other shuffles and
builds batches (numpy and Arrow release the GIL for the copying).
"""

from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TypeVar

import numpy as np
import pyarrow.parquet as pq
import torch

from ctr.batch import Batch
from ctr.datasets.buffer import ShuffleBuffer
from ctr.datasets.encode import GROUP
from ctr.datasets.position import Position
from ctr.datasets.rows import BatchBuilder, RowBlock, RowLayout, check_rows_fit, pack
from ctr.datasets.shards import shard_files
from ctr.datasets.transfer import ahead_on_device, needs_pinning
from ctr.errors import DataError
from ctr.schema import Schema

T = TypeVar("T")


@dataclass(frozen=True)
class Unit:
    """One parquet row group: the unit of reading and of the seeded shard order."""

    file: Path
    group: int
    rows: int


class BatchLoader(Position):
    """Iterates batches of one encoded split.

    Args:
        folder: the split's shard folder; schema: its fitted schema.
        batch_size: rows per batch; shuffle: shuffle rows each epoch (seeded by seed, epoch).
        drop_last: drop a last, smaller batch.
        min_rows: the fewest rows a last batch may give each process, else it is dropped
            (training uses 2: BatchNorm and Dice need two rows for batch statistics; 0, the
            default, keeps every last batch, even one that leaves a rank's part empty).
        rank, world_size: this process's share of each epoch (equal row and batch counts).
        split_batches: the share is instead rank's part of every batch of ``batch_size`` rows
            (rows ``rank·n // world_size`` up to ``(rank + 1)·n // world_size`` of a batch of n):
            every rank reads the whole split in the one-process order and keeps its part.
        prefetch: batches built ahead in a background thread (0 = build inline).
        shuffle_buffer: rows the shuffle buffer holds (memory: about this many encoded rows).
        device: where the batches are used; for a CUDA device they are built in pinned memory
            and copied one step ahead (``ctr.datasets.transfer``).

    Its position (epoch, batches handed out; ``ctr.datasets.position``) is saved in
    checkpoints: a resumed run's first pass starts at the saved batch.

    Example:
        >>> loader = BatchLoader(prepared.split_dir("train"), prepared.schema, 4096, shuffle=True)  # doctest: +SKIP
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
        min_rows: int = 0,
        rank: int = 0,
        world_size: int = 1,
        split_batches: bool = False,
        prefetch: int = 2,
        shuffle_buffer: int = 1_000_000,
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        files = shard_files(folder)
        if not files:
            raise DataError(f"{folder}: no encoded rows in this split")
        if not 0 <= rank < world_size or batch_size < 1 or shuffle_buffer < 1:
            raise ValueError("need 0 <= rank < world_size, batch_size >= 1 and shuffle_buffer >= 1")
        self.schema = schema
        self.units = [unit for file in files for unit in _row_groups(file)]
        self.total_rows = sum(u.rows for u in self.units)
        self.layout = RowLayout.of(schema, GROUP in pq.ParquetFile(files[0]).schema_arrow.names)
        batch = min(batch_size, self.total_rows)
        held = min(shuffle_buffer, self.total_rows) if shuffle else max(u.rows for u in self.units)
        holder = f"the shuffle buffer (data.shuffle_buffer {shuffle_buffer})" if shuffle else "a row group"
        check_rows_fit(self.layout, max(held, batch), holder, batch, "data.shuffle_buffer" if shuffle else None)
        self.builder = BatchBuilder(self.layout)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.drop_last, self.min_rows, self.rank, self.world_size = drop_last, min_rows, rank, world_size
        self.split_batches = split_batches
        self.prefetch, self.shuffle_buffer = prefetch, shuffle_buffer
        self.device = torch.device(device)
        self._open: list[Iterator[Batch]] = []

    @property
    def rows(self) -> int:
        """Rows read per epoch: this rank's share (every rank the same number), or the whole
        split with ``split_batches``."""
        return self.total_rows if self.split_batches else self.total_rows // self.world_size

    def __len__(self) -> int:
        full, rest = divmod(self.rows, self.batch_size)
        return full + (1 if rest and self._keeps_last(rest) else 0)

    def _keeps_last(self, rows: int) -> bool:
        return keeps_last(rows, self.drop_last, self.min_rows, self.world_size if self.split_batches else 1)

    def batch_rows(self, index: int) -> int:
        """Rows of batch ``index`` of an epoch over all ranks (with ``split_batches``: the
        rows of the whole batch whose part this rank holds)."""
        rows = min(self.batch_size, self.rows - index * self.batch_size)
        return rows if self.split_batches else rows * self.world_size

    def __iter__(self) -> Iterator[Batch]:
        """An epoch's batches. The pass begins (its epoch and the batches to skip taken) at the
        first batch: an iterator made and never read (Lightning makes one to check that the
        loader is iterable) takes no epoch and keeps a restored position."""
        epoch, skip = self._begin_pass()
        blocks = itertools.islice(self._batches(epoch), skip, None)
        if self.split_batches:
            blocks = (self._part(block) for block in blocks)
        batches = (self.builder.build(block) for block in blocks)
        if needs_pinning(self.device):
            batches = (batch.pin_memory() for batch in batches)
        iterator = _prefetched(batches, self.prefetch) if self.prefetch else batches
        self._open = [it for it in self._open if it.gi_frame is not None] + [iterator]
        yield from self._counted(ahead_on_device(iterator, self.device))

    def close(self) -> None:
        """Stops the epochs still open (a run that ``max_steps`` ended mid-epoch) and joins
        their background threads, so none is left working when the process exits."""
        for iterator in self._open:
            iterator.close()
        self._open = []

    def _part(self, block: RowBlock) -> RowBlock:
        """This rank's rows of a batch of all ranks."""
        n, world = block.rows, self.world_size
        return block.take(slice(self.rank * n // world, (self.rank + 1) * n // world))

    def _batches(self, epoch: int) -> Iterator[RowBlock]:
        """Blocks of exactly ``batch_size`` rows (the last may be smaller, or dropped)."""
        blocks = self._blocks(epoch)
        if self.prefetch:  # read and decode in a second thread, ahead of the shuffling
            blocks = _prefetched(blocks, 2)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch, 0 if self.split_batches else self.rank, 1])
            blocks = ShuffleBuffer(min(self.shuffle_buffer, max(self.rows, 1)), rng).mix(blocks)
        size, pending = self.batch_size, None
        for block in blocks:
            start = 0
            if pending is not None:  # complete the batch begun by the previous block
                start = min(size - pending.rows, block.rows)
                pending = RowBlock.concat([pending, block.take(slice(0, start))])
                if pending.rows < size:
                    continue
                yield pending
            full = start + (block.rows - start) // size * size
            for first in range(start, full, size):
                yield block.take(slice(first, first + size))
            pending = block.take(slice(full, block.rows)) if full < block.rows else None
        if pending is not None and self._keeps_last(pending.rows):
            yield pending

    def _blocks(self, epoch: int) -> Iterator[RowBlock]:
        """This rank's rows, one row group (or part of one) at a time."""
        order = np.arange(len(self.units))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.units))
        share = 0 if self.split_batches else self.rank
        first, last = share * self.rows, (share + 1) * self.rows
        position = 0
        readers: dict[Path, pq.ParquetFile] = {}
        for k in order:
            unit = self.units[k]
            begin, end = max(first, position), min(last, position + unit.rows)
            position += unit.rows
            if begin >= end:
                continue
            reader = readers.setdefault(unit.file, pq.ParquetFile(unit.file))
            table = reader.read_row_group(unit.group).slice(begin - (position - unit.rows), end - begin)
            yield pack(table, self.layout, self.schema)


def keeps_last(rows: int, drop_last: bool, min_rows: int, parts: int = 1) -> bool:
    """Whether a last batch of ``rows`` (< batch_size) rows is handed out: not with
    ``drop_last``, nor when the smallest of its ``parts`` (the processes' parts of it) would
    hold fewer than ``min_rows``."""
    return not drop_last and rows // parts >= min_rows


def _row_groups(file: Path) -> list[Unit]:
    meta = pq.ParquetFile(file).metadata
    return [Unit(file, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]


def _prefetched(items: Iterator[T], depth: int) -> Iterator[T]:
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
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # stops a nested prefetch's thread too
                close()
        put(done)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
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
        thread.join(timeout=30)
