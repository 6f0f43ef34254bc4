"""Storage helpers shared by the compressing methods: universal hashing, packed bit masks and
pooled lookups of arbitrary tables through the kernels."""

from __future__ import annotations

import torch
from torch import Tensor

from ctr.errors import RecipeError
from ctr.kernels.embedding_bag import Backend, embedding_bag, resolve_backend

MERSENNE_PRIME = 2**31 - 1
SEED_BYTES = 16  # one (a, b) pair of int64


def draw_hash_seeds(count: int) -> Tensor:
    """``count`` seeds (a, b) of Carter–Wegman hashing, int64 [count, 2], from torch's RNG.

    ``a`` is drawn from [1, p) and ``b`` from [0, p) with p = 2^31 − 1, so
    h(x) = ((a·x + b) mod p) mod m is a 2-universal family.
    """
    a = torch.randint(1, MERSENNE_PRIME, (count, 1), dtype=torch.int64)
    b = torch.randint(0, MERSENNE_PRIME, (count, 1), dtype=torch.int64)
    return torch.cat([a, b], dim=1)


def universal_hash(ids: Tensor, a: Tensor, b: Tensor, buckets: Tensor | int) -> Tensor:
    """((a·x + b) mod p) mod m for int64 ids [N] (a, b, buckets broadcast against ids).

    Ids are reduced mod p first, so a·x < 2^62 never overflows int64.
    """
    x = torch.remainder(ids, MERSENNE_PRIME)
    return torch.remainder(torch.remainder(a * x + b, MERSENNE_PRIME), buckets)


def pack_bits(mask: Tensor) -> Tensor:
    """Packs a bool tensor [..., n] into uint8 [..., ceil(n / 8)] (bit i of byte j = item 8j + i)."""
    n = mask.shape[-1]
    padded = torch.zeros(*mask.shape[:-1], (n + 7) // 8 * 8, dtype=torch.uint8, device=mask.device)
    padded[..., :n] = mask.to(torch.uint8)
    weights = (2 ** torch.arange(8, device=mask.device)).to(torch.uint8)
    return (padded.view(*mask.shape[:-1], -1, 8) * weights).sum(-1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, n: int) -> Tensor:
    """Inverse of ``pack_bits``: uint8 [..., ceil(n / 8)] → bool [..., n]."""
    bits = (2 ** torch.arange(8, device=packed.device)).to(torch.uint8)
    flat = (packed.unsqueeze(-1) & bits) != 0
    return flat.flatten(-2)[..., :n]


class KernelLookup:
    """Pooled lookups of any weight buffer through ``ctr.kernels``, backend resolved once.

    Args:
        requested: the recipe's ``embedding.backend`` (``None`` = environment or automatic).
    """

    def __init__(self, requested: str | None):
        self.requested = requested
        self._resolved: tuple[torch.device, Backend] | None = None

    def __call__(self, weight: Tensor, rows: Tensor, offsets: Tensor, weights: Tensor | None) -> Tensor:
        """Weighted sum of ``weight`` rows per bag: [num_bags, weight.shape[1]]."""
        if self._resolved is None or self._resolved[0] != weight.device:
            self._resolved = (weight.device, resolve_backend(self.requested, weight.device))
        return embedding_bag(weight, rows, offsets, weights, backend=self._resolved[1])


def table_starts(tables: dict[str, int]) -> Tensor:
    """First global row of each table [T] int64 when the tables' rows are laid end to end."""
    sizes = torch.tensor(list(tables.values()), dtype=torch.int64)
    return torch.cumsum(sizes, 0) - sizes


def hashed_table_starts(method: str, tables: dict[str, int]) -> Tensor:
    """``table_starts`` for a method that hashes global rows mod p = 2^31 − 1.

    Rows g and g + p would hash alike in every hash, so two ids would share every element;
    the tables together may hold at most p rows.
    """
    total = sum(tables.values())
    if total > MERSENNE_PRIME:
        raise RecipeError(f"embedding.method: {method} hashes global rows mod p = 2^31 - 1, but the tables hold "
                          f"{total:,} rows together; rows g and g + p would share every element (use a method "
                          "that hashes per table, such as hash or unified, or cap the vocabularies)")
    return table_starts(tables)
