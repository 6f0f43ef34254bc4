"""Keeping data-parallel copies of a method equal when training writes its stored rows
outside the optimizer (``EmbeddingMethod.sync_replicas``): what each rank recorded in a
step is gathered from every rank, in rank order, and applied alike on every copy."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def gather_padded(tensor: Tensor, world: int) -> Tensor:
    """Every rank's ``tensor`` [n_r, ...] concatenated along dim 0 in rank order [Σ n_r, ...]
    (padded to the longest for the collective, then trimmed)."""
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(c.item())] for part, c in zip(parts, counts)])


def gather_records(records: list[tuple[Tensor, ...]], empty: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Each field of every rank's ``records`` (tuples of [n, ...] tensors) concatenated in
    record order, then across ranks in rank order [Σ n, ...]; a rank without records sends
    ``empty`` (its fields [0, ...]), so every rank takes part in the same collectives."""
    world = dist.get_world_size()
    fields = zip(*records) if records else ([part] for part in empty)
    return tuple(gather_padded(torch.cat(list(parts)), world) for parts in fields)


def last_occurrences(rows: Tensor) -> Tensor:
    """Positions [U] of the last occurrence of each distinct row of ``rows`` [N], by row."""
    unique, inverse = torch.unique(rows, return_inverse=True)
    positions = torch.arange(rows.numel(), device=rows.device)
    last = torch.full_like(unique, -1)
    return last.scatter_reduce_(0, inverse, positions, "amax")


def broadcast_rows(buffer: Tensor, rows: Tensor) -> None:
    """Writes rank 0's ``buffer[rows]`` into every rank's ``buffer`` [R, ...] (sent as bytes:
    exact, and any dtype the backend lacks, e.g. int16 on gloo, goes through)."""
    part = buffer[rows].contiguous()
    dist.broadcast(part.view(torch.uint8), 0)
    buffer[rows] = part


class WrittenCodes:
    """Mixin of a method whose training lookups write ``codes`` [R, P] of the rows they saw
    (a choice no gradient carries). Alone it writes them at once; replicated
    (``replicated``), it records them and ``sync_replicas`` writes every rank's records on
    every copy, the last write of a row winning in rank order."""

    codes: Tensor
    replicated: bool
    synced_buffers = ("codes",)

    @torch.no_grad()
    def write_codes(self, rows: Tensor, codes: Tensor) -> None:
        """Sets ``codes[rows]`` to ``codes`` [N, P] (rows [N]), now or at the next sync."""
        codes = codes.to(self.codes.dtype)
        if self.replicated:
            self._written = [*getattr(self, "_written", []), (rows, codes)]
        else:
            self.codes[rows] = codes

    @torch.no_grad()
    def sync_replicas(self) -> None:
        if not self.replicated:
            return
        empty = (self.codes.new_zeros(0, dtype=torch.int64), self.codes[:0])
        rows, codes = gather_records(getattr(self, "_written", []), empty)
        self._written = []
        keep = last_occurrences(rows)
        self.codes[rows[keep]] = codes[keep]
