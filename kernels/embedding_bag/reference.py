"""Pure-torch table-batched embedding bag: the oracle every other backend is tested against.

All tables of a collection live in one weight buffer [R, D]; the caller has already turned
each id into a global row (``table_row_offset + id``). Bags are given by ``offsets``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def embedding_bag(
    weight: Tensor,
    indices: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None = None,
    mode: str = "sum",
    sparse: bool = True,
) -> Tensor:
    """Pools rows of ``weight`` over each bag.

    Args:
        weight: [R, D] rows of every table, one buffer.
        indices: int64 [N] global row of each id.
        offsets: int64 [num_bags + 1] bag boundaries into ``indices``.
        per_sample_weights: optional [N] weight of each id (sum mode only).
        mode: ``sum`` or ``mean``; an empty bag pools to zeros.
        sparse: give ``weight`` a sparse gradient (only the touched rows).

    Returns:
        [num_bags, D] in ``weight``'s dtype, accumulated in fp32.
    """
    if mode not in ("sum", "mean"):
        raise ValueError(f"mode must be 'sum' or 'mean', got {mode!r}")
    if per_sample_weights is not None and mode != "sum":
        raise ValueError("per_sample_weights need mode='sum'")
    compute = weight if weight.dtype == torch.float32 else weight.float()
    psw = None if per_sample_weights is None else per_sample_weights.to(compute.dtype)
    pooled = F.embedding_bag(
        indices,
        compute,
        offsets,
        mode=mode,
        sparse=sparse and weight.requires_grad,
        per_sample_weights=psw,
        include_last_offset=True,
    )
    return pooled.to(weight.dtype)
