"""What an embedding method is handed: a grid of single ids, or weighted bags of ids.

A batch whose features all hold one id each, pooled by sum, reaches a method as an
``IdGrid`` (ids [B, F]); any other batch as ``Bags``, one bag per pooled feature and sample
and one bag per id of a per-position sequence, mean pooling folded into per-id weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class FeatureSlice:
    """The bags and ids of one feature inside a ``Bags`` batch.

    Args:
        feature: index of the feature in the schema's sparse features.
        bags: slice of bag indices; ids: slice of id positions.
        offsets: int64 [bags + 1] offsets local to ``ids``.
    """

    feature: int
    bags: slice
    ids: slice
    offsets: Tensor


@dataclass
class Bags:
    """Weighted bags of ids, grouped by feature in schema order.

    Args:
        feature: int64 [N] index (into the schema's sparse features) of each id's feature.
        ids: int64 [N] ids as encoded (0 = padding, 1 = OOV).
        offsets: int64 [num_bags + 1].
        weights: optional float [N] per-id weights (mean pooling is 1/len here).
    """

    feature: Tensor
    ids: Tensor
    offsets: Tensor
    weights: Tensor | None
    feature_bags: list[int] = field(default_factory=list, repr=False)  # F + 1 first-bag indices
    samples: int = 0  # B when every feature has one bag per sample (no per-position bags), else 0

    def per_feature(self) -> list[FeatureSlice]:
        """Each feature's bags and ids (one host read of the boundaries)."""
        starts = self.feature_bags
        bounds = self.offsets[starts].tolist()
        return [
            FeatureSlice(f, slice(starts[f], starts[f + 1]), slice(bounds[f], bounds[f + 1]),
                         self.offsets[starts[f] : starts[f + 1] + 1] - bounds[f])
            for f in range(len(starts) - 1)
        ]

    def equal_groups(self) -> int:
        """F when every feature has one bag per sample (the bags are then [F, B] in order, and
        a method may return them as [F, B, D]), else 1."""
        return len(self.feature_bags) - 1 if self.samples else 1


@dataclass
class IdGrid:
    """A batch of single ids: ``ids`` [B, F] (column f holds feature ``features[f]``), ``features``
    int64 [F]. ``ids`` may be a transposed view of the batch's feature-major values."""

    ids: Tensor
    features: Tensor

    def as_bags(self) -> Bags:
        """The same ids as feature-major bags of one id each."""
        b, f = self.ids.shape
        ids = self.ids.t().reshape(-1)
        offsets = torch.arange(ids.numel() + 1, device=ids.device)
        feature = self.features.repeat_interleave(b)
        return Bags(feature, ids, offsets, None, [k * b for k in range(f + 1)], samples=b)
