"""``pep``: PEP — learnable soft thresholds prune the tables, then the ticket retrains from its start."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctr.embeddings.largest import largest_mask
from ctr.embeddings.sparse import PrunedTable
from ctr.embeddings.stages import Stage, StageContext, StagedConfig
from ctr.errors import RecipeError, refuse_for_training
from ctr.registry import EMBEDDINGS
from ctr.schema import Schema

log = logging.getLogger(__name__)


@dataclass
class PEPConfig(StagedConfig):
    """Settings of ``pep``; ``budget`` is required (it sets the target sparsity).

    Args:
        threshold_init: initial s of every threshold g(s) = gk·sigmoid(s) (the artifact's −150).
        gk: the scale of g, as the authors' code's ``gk`` (their default 1; the artifact has
            none, i.e. 1).
        check_every: training steps between checks of the sparsity against the target.
        stages: ``search`` (weights and thresholds train), ``mask`` (a procedure: the mask
            is fixed) and ``retrain`` (the kept entries retrain from their initial values).
    """

    stage_names: ClassVar[tuple[str, ...]] = ("search", "mask", "retrain")
    method: str = "pep"
    threshold_init: float = -150.0
    gk: float = 1.0
    check_every: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gk <= 0 or self.check_every < 1:
            raise ValueError("need gk > 0 and check_every >= 1")
        if self.init_std == 0:
            refuse_for_training("init_std: must be > 0 for pep, got 0.0 (sign(w)·ReLU(|w| − g(s)) has no gradient "
                                "at w = 0: entries that start at 0 would never train)")


def pruning_threshold(s: Tensor, gk: float) -> Tensor:
    """The pruning threshold g(s) = gk·sigmoid(s), elementwise."""
    return gk * torch.sigmoid(s)


def soft_threshold(weight: Tensor, s: Tensor, gk: float) -> Tensor:
    """PEP's re-parameterisation sign(w)·ReLU(|w| − gk·sigmoid(s)), elementwise."""
    return torch.sign(weight) * F.relu(weight.abs() - pruning_threshold(s, gk))


@EMBEDDINGS.register("pep", config=PEPConfig)
class PEPEmbedding(PrunedTable):
    """PEP: Plug-in Embedding Pruning with learnable thresholds.

    Liu, Chen, Zhao, Xu, "Learnable Embedding Sizes for Recommender Systems", ICLR 2021;
    thresholds as the VLDB 2024 benchmark's artifact (PKU-DAIR/Hetu,
    tools/EmbeddingMemoryCompression: ``feature_dimension``, one threshold per id and
    dimension, initialised at −150). Stage ``search``: an entry embeds as
    sign(w)·ReLU(|w| − gk·sigmoid(s)); weights and thresholds train together (the sparse
    embedding optimizer). Every ``check_every`` steps the zero entries are counted; the
    first time they reach the target sparsity S the mask is taken (the paper's stopping
    point). Stage ``mask``: if S was never reached, the entries with the largest
    |w| − g(s) are kept up to the budget. Stage ``retrain``: every parameter is
    rewound to its initial value (the lottery ticket), and the kept entries, stored in the
    shared sparse format (``SparseRows``), retrain with the mask fixed.

    Sizing: S = 1 − kept / (R·D), kept the most entries whose stored format (bitmap or
    CSR, the smaller) fits ``budget`` × full bytes. ``memory_bytes`` = that format's bytes
    (before ``retrain``: the budget's).

    Shapes: ids [N] of features [N] → [N, D].
    """

    needs_budget = True

    def __init__(self, schema: Schema, config: PEPConfig):
        super().__init__(schema, config)
        self.register_buffer("keep", torch.ones(self.rows, config.dim, dtype=torch.bool))
        self.register_buffer("reached_at", torch.zeros((), dtype=torch.int64))  # step S was reached, 0: not yet
        self.threshold = nn.Parameter(torch.full((self.rows, config.dim), config.threshold_init))

    def stages(self) -> list[Stage]:
        return [Stage("search"), Stage("mask", kind="procedure"), Stage("retrain", rewind=True)]

    def begin_stage(self, stage: Stage) -> None:
        if stage.name == "retrain" and self.sparse is None:
            self.store(self.keep)
            del self.threshold, self.keep

    def dense_rows(self, rows: Tensor) -> Tensor:
        weight = F.embedding(rows, self.weight, sparse=True)
        return soft_threshold(weight, F.embedding(rows, self.threshold, sparse=True), self.config.gk)

    def dense_parameters(self) -> list[nn.Parameter]:
        return [self.weight, self.threshold]

    def alive(self) -> Tensor:
        """Entries [R, D] the thresholds have not pruned: |w| > g(s)."""
        return self.weight.abs() > pruning_threshold(self.threshold, self.config.gk)

    @torch.no_grad()
    def advance(self) -> None:
        """One search step: takes the mask the first time the sparsity reaches S."""
        self.step += 1
        if int(self.reached_at) or int(self.step) % self.config.check_every:
            return
        alive = self.alive()
        if not bool(alive.any()):  # nothing left to retrain: the thresholds overshot the target
            raise self._pruned_everything(f"by step {int(self.step)}", "or check the sparsity more often "
                                          "(embedding.check_every)")
        if int(alive.sum()) <= self.kept:
            self.keep.copy_(alive)
            self.reached_at.fill_(int(self.step))
            log.info("pep: sparsity %.4f reached at step %d", self.target, int(self.step))

    def run_procedure(self, stage: Stage, context: StageContext) -> None:
        """Stage ``mask``: without S reached, keeps the largest |w| − g(s) > 0, up to the budget."""
        if int(self.reached_at):
            return
        with torch.no_grad():
            margin = (self.weight.abs() - pruning_threshold(self.threshold, self.config.gk)).flatten()
            self.keep.copy_((largest_mask(margin, self.kept) & (margin > 0)).view_as(self.keep))
        if not bool(self.keep.any()):
            never_checked = int(self.step) < self.config.check_every
            raise self._pruned_everything(f"by the end of the search (step {int(self.step)})",
                                          "or search at least embedding.check_every steps" if never_checked else "")
        log.info("pep: the search never reached sparsity %.4f; the mask keeps the %d largest |w| - g(s) > 0",
                 self.target, int(self.keep.sum()))

    def _pruned_everything(self, when: str, advice: str) -> RecipeError:
        return RecipeError(f"embedding.threshold_init: pep's thresholds pruned every entry {when} (g(s) passed every "
                           f"|w|): nothing is left to retrain; start them lower (the artifact's -150) {advice}".rstrip())

    def stage_summary(self, stage: Stage) -> dict[str, Any]:
        """The stored format and the search step that reached S (None: never, the mask was cut)."""
        summary = {**self.stored_summary(), "reached_at_step": int(self.reached_at) or None}
        if self.sparse is None:
            summary["kept"] = int(self.keep.sum())
        return summary
