"""The k largest entries of a tensor as a mask, in little memory.

The pruning methods keep the k largest of hundreds of millions of magnitudes (540M entries
for Criteo's tables at D = 16). ``torch.topk`` returns k values and k int64 indices (12
bytes per kept entry, 6 GB for half of those tables) on top of its own workspace. Here the
k-th largest value is bracketed from a random sample of the entries, two counting passes
check the bracket, and the exact value is selected among the few entries inside it (a
bracket that misses, which the sample size makes rare, falls back to a bisection over the
float32 order: one counting pass per bit). The answer is exact either way; the extra memory
is one boolean per entry and the bracket's entries.
"""

from __future__ import annotations

import math
import struct

import torch
from torch import Tensor

_KEY_OF_MINUS_INF = -2139095041  # order keys of ±inf: see _float_of_key
_KEY_OF_PLUS_INF = 2139095040
SAMPLE = 1 << 20  # entries drawn to bracket the k-th largest
SMALL = 1 << 22  # up to this many entries, torch's own selection is cheap enough


def _float_of_key(key: int) -> float:
    """The float32 whose order key is ``key``: non-negative floats are their own bit patterns,
    negative ones have all bits but the sign flipped, so keys compare as the floats do."""
    bits = key if key >= 0 else key ^ 0x7FFFFFFF
    return struct.unpack("<f", struct.pack("<i", bits))[0]


def kth_largest(values: Tensor, k: int) -> float:
    """The k-th largest entry of float32 ``values`` [N] (1 ≤ k ≤ N, no NaN): the largest v
    with at least k entries ≥ v."""
    n = values.numel()
    if n <= SMALL:
        return float(values.kthvalue(n - k + 1).values)
    generator = torch.Generator().manual_seed(0)
    sample = values[torch.randint(n, (SAMPLE,), generator=generator)].sort(descending=True).values
    spread = 6 * math.sqrt(k / n * (1 - k / n) * SAMPLE) + 2  # six standard deviations of the sample's count
    rank = k / n * SAMPLE
    upper = float(sample[max(int(rank - spread), 0)])
    lower = float(sample[min(int(rank + spread), SAMPLE - 1)])
    above = int(torch.count_nonzero(values > upper))
    inside = values[(values >= lower) & (values <= upper)]
    if above < k <= above + inside.numel():
        return float(inside.kthvalue(inside.numel() - (k - above) + 1).values)
    return _bisect(values, k)


def _bisect(values: Tensor, k: int) -> float:
    """``kth_largest`` by bisection over the float32 order keys (32 counting passes)."""
    low, high = _KEY_OF_MINUS_INF, _KEY_OF_PLUS_INF
    while low < high:
        middle = (low + high + 1) // 2
        if int(torch.count_nonzero(values >= _float_of_key(middle))) >= k:
            low = middle
        else:
            high = middle - 1
    return _float_of_key(low)


def largest_mask(values: Tensor, k: int) -> Tensor:
    """Boolean mask (``values``' shape) of exactly min(k, numel) largest entries of float32
    ``values`` (no NaN); among entries equal to the k-th largest, the first in order are kept."""
    return largest(values, k)[0]


def largest(values: Tensor, k: int) -> tuple[Tensor, float]:
    """``largest_mask`` and the smallest kept value (+inf when k ≤ 0): one selection for both."""
    flat = values.reshape(-1)
    if k >= flat.numel():
        return torch.ones_like(values, dtype=torch.bool), float(flat.min())
    if k <= 0:
        return torch.zeros_like(values, dtype=torch.bool), math.inf
    kth = kth_largest(flat, k)
    mask = flat > kth
    missing = k - int(torch.count_nonzero(mask))
    mask[torch.nonzero(flat == kth).squeeze(1)[:missing]] = True
    return mask.view_as(values), kth
