"""A vectorised shuffle buffer: bounded memory, rows mixed across the blocks that pass through.

The buffer holds up to ``capacity`` rows. While it fills, incoming rows are stored. Once it
is full, each incoming block of k rows evicts k rows from uniformly chosen slots (they are
emitted, in that random order) and takes their places. At the end, the rows left are
emitted in a random permutation. This is the classic shuffle buffer (as in
``tf.data.Dataset.shuffle``) done k rows at a time with numpy gathers and scatters, so its
cost is O(rows), independent of the capacity. Data that fits in the buffer comes out as a
uniform random permutation.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ctr.datasets.rows import RowBlock


class ShuffleBuffer:
    """Mixes blocks of rows through ``capacity`` slots, drawing from ``rng``.

    Args:
        capacity: rows held (memory is about ``capacity`` encoded rows).
        rng: the source of randomness (seed it for a reproducible order).
    """

    def __init__(self, capacity: int, rng: np.random.Generator):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.rng = rng
        self.store: RowBlock | None = None
        self.size = 0

    def mix(self, blocks: Iterator[RowBlock]) -> Iterator[RowBlock]:
        """Every row of ``blocks`` exactly once, shuffled."""
        for block in blocks:
            yield from self.push(block)
        rest = self.drain()
        if rest is not None:
            yield rest

    def push(self, block: RowBlock) -> Iterator[RowBlock]:
        """Stores ``block``; yields the rows it displaces once the buffer is full."""
        if self.store is None:
            self.store = block.empty_like(self.capacity)
        start = 0
        while start < block.rows:
            if self.size < self.capacity:
                count = min(self.capacity - self.size, block.rows - start)
                self.store.put(slice(self.size, self.size + count), block.take(slice(start, start + count)))
                self.size += count
            else:
                count = min(self.capacity, block.rows - start)
                slots = self.rng.choice(self.capacity, size=count, replace=False)
                out = self.store.take(slots)
                self.store.put(slots, block.take(slice(start, start + count)))
                yield out
            start += count

    def drain(self) -> RowBlock | None:
        """The rows left, in random order; empties the buffer."""
        if self.store is None or self.size == 0:
            return None
        rest = self.store.take(self.rng.permutation(self.size))
        self.size = 0
        return rest
