"""``deeplight``: DeepLight — gradual magnitude pruning of the tables to the budget's sparsity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ctr.embeddings.largest import largest_mask
from ctr.embeddings.sparse import PrunedTable
from ctr.embeddings.stages import Stage, StagedConfig
from ctr.registry import EMBEDDINGS


@dataclass
class DeepLightConfig(StagedConfig):
    """Settings of ``deeplight``; ``budget`` is required (it sets the final sparsity).

    Args:
        warmup_steps: dense training steps before pruning starts (the artifact's 0).
        interval: prune every this many training steps (the artifact's 10).
        decay: the schedule s(t) = S · (1 − decay^(t / 100)) (the artifact's 0.99).
        stages: ``prune`` (dense warm-up and gradual pruning) and ``finetune`` (the kept
            entries train on, stored sparse); each ``{epochs, max_steps}``.
    """

    stage_names: ClassVar[tuple[str, ...]] = ("prune", "finetune")
    method: str = "deeplight"
    warmup_steps: int = 0
    interval: int = 10
    decay: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.warmup_steps < 0 or self.interval < 1 or not 0 < self.decay < 1:
            raise ValueError("need warmup_steps >= 0, interval >= 1 and 0 < decay < 1")


def scheduled_sparsity(step: int, target: float, config: DeepLightConfig) -> float:
    """The artifact's schedule: 0 during warm-up, then S·(1 − decay^((t − warm-up)/100))."""
    if step <= config.warmup_steps:
        return 0.0
    return target * (1 - config.decay ** ((step - config.warmup_steps) / 100))


def prune_smallest(weight: Tensor, sparsity: float) -> None:
    """Zeroes the ⌊sparsity · numel⌋ entries of smallest magnitude of ``weight`` in place."""
    count = int(sparsity * weight.numel())
    if count < 1:
        return
    magnitude = weight.detach().abs()
    weight.data.masked_fill_(~largest_mask(magnitude, weight.numel() - count), 0)


@EMBEDDINGS.register("deeplight", config=DeepLightConfig)
class DeepLightEmbedding(PrunedTable):
    """DeepLight: structural pruning of the embedding tables during training.

    Deng, Pan, Wang, Zhou, Chen, Wang, "DeepLight: Deep Lightweight Feature Interactions for
    Accelerating CTR Predictions in Ad Serving", WSDM 2021; schedule as the VLDB 2024
    benchmark's artifact (PKU-DAIR/Hetu, tools/EmbeddingMemoryCompression). Stage
    ``prune``: every ``interval`` training steps after ``warmup_steps``, the entries of
    smallest magnitude over all tables are zeroed until a fraction s(t) = S·(1 − 0.99^(t/100))
    is zero (pruned entries may grow back until the next pruning, as the artifact's; the
    artifact also prunes on each epoch's last step, which an embedding cannot see). Only
    the tables are pruned, as in the artifact; the paper also prunes the DNN and the
    field-pair weights.
    Stage ``finetune``: the S·R·D smallest entries are pruned for good and the kept ones,
    stored in the shared sparse format (``SparseRows``), train on.

    Sizing: S = 1 − kept / (R·D) with kept the most entries whose stored format (bitmap or
    CSR, the smaller) fits ``budget`` × full bytes. The artifact's schedule never reaches S
    in finite time; ``finetune`` enforces it, so the stored model fits. ``memory_bytes`` =
    the stored format's bytes (before ``finetune``: what it will store).

    Shapes: ids [N] of features [N] → [N, D].
    """

    needs_budget = True

    def stages(self) -> list[Stage]:
        return [Stage("prune"), Stage("finetune")]

    def begin_stage(self, stage: Stage) -> None:
        if stage.name == "finetune" and self.sparse is None:
            self.store(largest_mask(self.weight.detach().abs(), self.kept))

    @torch.no_grad()
    def advance(self) -> None:
        """One training step of the schedule: prunes every ``interval`` steps after the warm-up."""
        self.step += 1
        since = int(self.step) - self.config.warmup_steps
        if since > 0 and since % self.config.interval == 0:
            prune_smallest(self.weight, scheduled_sparsity(int(self.step), self.target, self.config))

    def sparsity(self) -> float:
        """Fraction of zero entries of the table now."""
        if self.sparse is not None:
            return 1 - self.sparse.values.numel() / (self.rows * self.dim)
        return float((self.weight == 0).float().mean())

    def stage_summary(self, stage: Stage) -> dict[str, Any]:
        return {**self.stored_summary(), "sparsity": round(self.sparsity(), 6)}
