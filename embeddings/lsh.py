"""L2-LSH block matching for embedding deduplication (the ``dedup`` method's procedure)."""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK_ELEMENTS = 1 << 24  # elements of the candidate comparisons held at once


def third_quartile(blocks: Tensor) -> Tensor:
    """The 75th percentile of each block [n] (linear interpolation, as numpy's default)."""
    out = torch.empty(blocks.shape[0], dtype=blocks.dtype)
    position = 0.75 * (blocks.shape[1] - 1)
    low, frac = int(position), position - int(position)
    step = max(1, CHUNK_ELEMENTS // blocks.shape[1])
    for start in range(0, blocks.shape[0], step):
        ordered = torch.sort(blocks[start : start + step], dim=1).values
        high = min(low + 1, blocks.shape[1] - 1)
        out[start : start + step] = ordered[:, low] * (1 - frac) + ordered[:, high] * frac
    return out


class BlockMatcher:
    """Finds, for blocks visited in ascending order of their 3rd quartile, the most similar
    earlier block among L2-LSH candidates, and merges blocks until enough are gone.

    L2 hashes (Datar et al., SoCG 2004) h_l(v) = ⌊(a_l·v + b_l) / r⌋ with a_l ~ N(0, I),
    b_l ~ U[0, r), one per table l. A block's candidates are, in each of the L tables, the
    latest block visited before it in the same bucket (at most L candidates: a bounded
    version of the artifact's query of every earlier block sharing a bucket, which is
    quadratic on Criteo-sized tables). Similarity of two blocks is the share of their
    elements within ``tolerance`` of each other. A last block padded past the table's rows
    is, as in the artifact, compared on its real elements only and merged into no block.

    Args:
        tables: L; width: r; tolerance: as above; generator: the hashes' random numbers.
    """

    def __init__(self, tables: int, width: float, tolerance: float, generator: torch.Generator):
        self.tables, self.width, self.tolerance, self.generator = tables, width, tolerance, generator

    def candidates(self, blocks: Tensor, rank: Tensor, skip: int | None = None) -> Tensor:
        """[n, L] index of each block's latest earlier block in its bucket of table l, or −1;
        block ``skip`` is no block's candidate (its follower takes the block before it)."""
        n, size = blocks.shape
        order = torch.argsort(rank)
        out = torch.full((n, self.tables), -1, dtype=torch.int64)
        for table in range(self.tables):
            a = torch.randn(size, generator=self.generator, dtype=blocks.dtype)
            b = torch.rand((), generator=self.generator, dtype=blocks.dtype) * self.width
            bucket = torch.floor((blocks @ a + b) / self.width).to(torch.int64)
            visit = order[torch.sort(bucket[order], stable=True).indices]  # by bucket, then by rank
            same = bucket[visit[1:]] == bucket[visit[:-1]]
            out[visit[1:][same], table] = visit[:-1][same]
            if skip is not None:
                out[out[:, table] == skip, table] = out[skip, table]
        return out

    def similarity(self, blocks: Tensor, candidates: Tensor, valid: int | None = None) -> Tensor:
        """[n, L] share of elements within ``tolerance`` of each candidate (−1: none); the
        last block's over its first ``valid`` elements when given."""
        n, size = blocks.shape
        out = torch.full(candidates.shape, -1.0)
        step = max(1, CHUNK_ELEMENTS // (size * self.tables))
        for start in range(0, n, step):
            part = candidates[start : start + step]
            other = blocks[part.clamp(min=0)]  # [chunk, L, size]
            close = ((other - blocks[start : start + step, None]).abs() <= self.tolerance).float().mean(-1)
            out[start : start + step] = torch.where(part >= 0, close, out[start : start + step])
        if valid is not None:
            last = candidates[-1]
            close = ((blocks[last.clamp(min=0), :valid] - blocks[-1, :valid]).abs() <= self.tolerance).float().mean(-1)
            out[-1] = torch.where(last >= 0, close, -1.0)
        return out

    def merge(
        self, blocks: Tensor, needed: int, threshold: float, valid: int | None = None,
    ) -> tuple[Tensor, dict[str, int]]:
        """Each block's representative [n] after merging ``needed`` blocks, and a report.

        Blocks whose best candidate reaches ``threshold`` are merged first, in quartile
        order; when they are too few, the next blocks go to their best candidate whatever
        its similarity, then to their predecessor in quartile order. ``valid``: the real
        elements of the last block when it is padded (no block merges into it).
        """
        n = blocks.shape[0]
        rank = torch.empty(n, dtype=torch.int64)
        order = torch.argsort(third_quartile(blocks), stable=True)
        rank[order] = torch.arange(n)
        padded = n - 1 if valid is not None and valid < blocks.shape[1] else None
        candidates = self.candidates(blocks, rank, padded)
        best_sim, best = self.similarity(blocks, candidates, valid if padded is not None else None).max(dim=1)
        partner = candidates.gather(1, best.unsqueeze(1)).squeeze(1)
        predecessor = self.predecessors(order, padded)
        chosen = torch.zeros(n, dtype=torch.bool)
        for pool in (best_sim >= threshold, partner >= 0, predecessor >= 0):
            left = needed - int(chosen.sum())
            if left <= 0:
                break
            fresh = pool & ~chosen
            chosen[order[fresh[order]][:left]] = True
        to = torch.where(partner >= 0, partner, predecessor)
        target = torch.where(chosen, to, torch.arange(n))
        report = {"merged": int(chosen.sum()), "forced": int((chosen & (best_sim < threshold)).sum()),
                  "identical": int((chosen & (best_sim == 1)).sum())}
        return self.roots(target), report

    @staticmethod
    def predecessors(order: Tensor, skip: int | None) -> Tensor:
        """[n] each block's predecessor in quartile ``order`` (−1: the first), passing over
        block ``skip``; ``skip`` itself takes the block before it (or the first other)."""
        predecessor = torch.full((order.numel(),), -1, dtype=torch.int64)
        kept = order if skip is None else order[order != skip]
        predecessor[kept[1:]] = kept[:-1]
        if skip is not None and kept.numel():
            position = int((order == skip).nonzero())
            predecessor[skip] = kept[max(position - 1, 0)]
        return predecessor

    @staticmethod
    def roots(target: Tensor) -> Tensor:
        """Follows merges to the block each one finally reads (merges point to earlier blocks)."""
        while True:
            nxt = target[target]
            if torch.equal(nxt, target):
                return target
            target = nxt
