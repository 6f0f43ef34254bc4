"""The data currency of ctr: `JaggedFeatures` and `Batch`.

A batch of B samples with F sparse features is stored feature-major, like TorchRec's
``KeyedJaggedTensor``: the bag of feature ``f`` for sample ``b`` is
``values[offsets[f * B + b] : offsets[f * B + b + 1]]``. A single-valued categorical is a bag
of length 1; a behaviour sequence is a bag of length <= max_len.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass
class JaggedFeatures:
    """Variable-length id bags for F features over B samples.

    Args:
        keys: feature names, length F.
        values: int64 ids [N].
        offsets: int64 [F * B + 1], starting at 0 and non-decreasing.
        weights: optional float per-id weights [N].
        single: every bag holds exactly one id (``offsets`` is ``0, 1, ..., N``), as when all
            features are single-valued categoricals; consumers then skip checking lengths.

    Example:
        >>> jf = JaggedFeatures.from_lengths(["a", "b"], torch.tensor([3, 4, 5]),
        ...                                  torch.tensor([1, 0, 2]))
        >>> jf.batch_size, jf.bag("b", 0).tolist()
        (1, [4, 5])
    """

    keys: list[str]
    values: Tensor
    offsets: Tensor
    weights: Tensor | None = None
    single: bool = False
    _feature_of_value: Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.offsets.numel() < 1 or (self.offsets.numel() - 1) % max(len(self.keys), 1):
            raise ValueError(
                f"offsets has {self.offsets.numel()} entries; expected F * B + 1 with F={len(self.keys)}"
            )
        if self.single and self.offsets.numel() != self.values.numel() + 1:
            raise ValueError(f"single=True needs one offset per value plus one, got {self.offsets.numel()} offsets "
                             f"for {self.values.numel()} values")

    @classmethod
    def from_lengths(
        cls, keys: list[str], values: Tensor, lengths: Tensor, weights: Tensor | None = None
    ) -> JaggedFeatures:
        """Builds from per-bag lengths [F * B] (feature-major)."""
        offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=values.device)
        torch.cumsum(lengths.to(torch.int64), 0, out=offsets[1:])
        return cls(keys, values, offsets, weights)

    @classmethod
    def from_dense(cls, keys: list[str], ids: Tensor) -> JaggedFeatures:
        """Builds single-valued bags from ids [B, F]."""
        batch, num = ids.shape
        if num != len(keys):
            raise ValueError(f"ids has {num} columns for {len(keys)} keys")
        offsets = torch.arange(batch * num + 1, dtype=torch.int64, device=ids.device)
        return cls(keys, ids.t().reshape(-1).to(torch.int64), offsets, single=True)

    @property
    def batch_size(self) -> int:
        return (self.offsets.numel() - 1) // len(self.keys) if self.keys else 0

    def lengths(self) -> Tensor:
        """Bag lengths [F * B]."""
        return self.offsets[1:] - self.offsets[:-1]

    def index(self, key: str) -> int:
        return self.keys.index(key)

    def feature_slice(self, key: str) -> tuple[int, int]:
        """Start and end positions of feature ``key``'s values in ``values``."""
        f, b = self.index(key), self.batch_size
        return int(self.offsets[f * b]), int(self.offsets[(f + 1) * b])

    def bag(self, key: str, sample: int) -> Tensor:
        f, b = self.index(key), self.batch_size
        return self.values[self.offsets[f * b + sample] : self.offsets[f * b + sample + 1]]

    def feature_of_value(self) -> Tensor:
        """Index of the feature each value belongs to, int64 [N] (found once per batch: the
        vocabulary check and the embedding's regrouping both read it)."""
        if self._feature_of_value is None:
            self._feature_of_value = self.per_value(torch.arange(len(self.keys), device=self.values.device))
        return self._feature_of_value

    def per_value(self, per_feature: Tensor) -> Tensor:
        """``per_feature`` [F] repeated for each value of its feature: [N]."""
        b = self.batch_size
        if not b:
            return per_feature.new_zeros(0)
        starts = self.offsets[:-1].view(len(self.keys), b)[:, 0]  # (a view: shapes torch.export can follow)
        counts = torch.cat([starts[1:], self.offsets[-1:]]) - starts
        return torch.repeat_interleave(per_feature, counts, output_size=self.values.numel())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> JaggedFeatures:
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return replace(self, values=move(self.values), offsets=move(self.offsets), weights=move(self.weights))

    def pin_memory(self) -> JaggedFeatures:
        """A copy in page-locked host memory (copies to a GPU can then run asynchronously)."""
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        return replace(self, values=pin(self.values), offsets=pin(self.offsets), weights=pin(self.weights))

    def tensors(self) -> list[Tensor]:
        return [t for t in (self.values, self.offsets, self.weights) if t is not None]

    def to_kjt(self):  # -> torchrec.KeyedJaggedTensor
        """Converts to TorchRec's KeyedJaggedTensor (needs torchrec installed)."""
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        return KeyedJaggedTensor(
            keys=list(self.keys), values=self.values, weights=self.weights, lengths=self.lengths()
        )


@dataclass
class Batch:
    """One mini-batch.

    Args:
        dense: float32 numeric features [B, Nd] (Nd may be 0).
        sparse: categorical and sequence features.
        labels: float32 [B] in {0, 1}.
        groups: optional int64 [B] group id for group AUC (e.g. the user).
    """

    dense: Tensor
    sparse: JaggedFeatures
    labels: Tensor
    groups: Tensor | None = None

    @property
    def size(self) -> int:
        return self.labels.numel()

    def pin_memory(self) -> Batch:
        """A copy in page-locked host memory."""
        return Batch(self.dense.pin_memory(), self.sparse.pin_memory(), self.labels.pin_memory(),
                     None if self.groups is None else self.groups.pin_memory())

    def tensors(self) -> list[Tensor]:
        """Every tensor of the batch."""
        rest = [t for t in (self.dense, self.labels, self.groups) if t is not None]
        return rest + self.sparse.tensors()

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            dense=self.dense.to(device, non_blocking=non_blocking),
            sparse=self.sparse.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            groups=None if self.groups is None else self.groups.to(device, non_blocking=non_blocking),
        )
