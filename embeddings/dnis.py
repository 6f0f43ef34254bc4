"""``dnis``: Differentiable Neural Input Search — soft selection of embedding dimensions per
frequency group, learned on validation data, then magnitude pruning and retraining."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctr.embeddings.base import EmbeddingMethod
from ctr.embeddings.budget import table_counts
from ctr.embeddings.largest import largest
from ctr.embeddings.sparse import SparseRows, format_bytes, pruned_size
from ctr.embeddings.stages import MultiStageMixin, SearchConfig, Stage, StageContext
from ctr.embeddings.storage import pack_bits, unpack_bits
from ctr.errors import RecipeError, refuse_for_training
from ctr.recipe import OptimizerConfig
from ctr.registry import EMBEDDINGS
from ctr.schema import Schema
from ctr.typed import require_at_least

log = logging.getLogger(__name__)


@dataclass
class DNISConfig(SearchConfig):
    """Settings of ``dnis`` (and ``stages.{search,prune,retrain}``); ``budget`` is required.

    Args:
        blocks: K, the frequency groups that get their own selection vector α_k ∈ [0, 1]^D.
        alpha_l1: L1 weight on α in the validation loss (sparser selections).
        retrain_from: ``searched`` retrains the pruned, α-scaled weights; ``initial`` the
            weights the net had before the search, under the same mask.
        arch_optimizer: optimizer of α (the authors' code: SGD).
    """

    stage_names = ("search", "prune", "retrain")
    method: str = "dnis"
    blocks: int = 6
    alpha_l1: float = 1e-5
    retrain_from: Literal["searched", "initial"] = "searched"
    arch_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="sgd", lr=0.01))

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "blocks")
        require_at_least(self, 0, "alpha_l1")


def frequency_blocks(counts: np.ndarray, blocks: int) -> np.ndarray:
    """Block of each row [R]: rows sorted by training count, cut into ``blocks`` groups that
    each hold an equal share of all occurrences (frequent ids: small groups; rare: large);
    rows never seen go to the last block."""
    order = np.argsort(-counts, kind="stable")
    sorted_counts = counts[order].astype(np.float64)
    before = (np.cumsum(sorted_counts) - sorted_counts) / max(sorted_counts.sum(), 1.0)
    block = np.minimum((before * blocks).astype(np.int64), blocks - 1)
    block[sorted_counts == 0] = blocks - 1
    out = np.empty_like(block)
    out[order] = block
    return out


def require_groups(config: DNISConfig, rows: int) -> None:
    """A RecipeError naming ``embedding.blocks`` when it is more than the ``rows`` ids of all
    tables: groups past the ids would stay empty (and α [blocks, D] would grow with them).
    A saved run is scored with the groups it trained (``refuse_for_training``)."""
    if config.blocks > rows:
        refuse_for_training(
            f"embedding.blocks: {config.blocks} is more than the {rows} ids of all tables ({config.method} groups "
            f"ids, so the groups past them would stay empty); use at most {rows}", RecipeError
        )


@EMBEDDINGS.register("dnis", config=DNISConfig)
class DNIS(MultiStageMixin, EmbeddingMethod):
    """DNIS: a soft selection layer over embedding dimensions, searched on validation data.

    Cheng, Shen, Huang, "Differentiable Neural Input Search for Recommender Systems",
    arXiv:2006.04466 (2020); details the paper leaves open follow the authors' code of its
    TKDE extension AutoSrh (github.com/Viperccc/AutoSrh), except the grouping: AutoSrh cuts
    frequency-sorted ids into blocks of given id counts (``model/nas.py``, ``feature_split``),
    ``frequency_blocks`` into blocks of equal shares of the occurrences.

    1. ``search`` (train, bilevel): ids are grouped by training frequency into K blocks
       (over all tables, each block an equal share of the occurrences); id v of block k
       embeds as e_v ⊙ α_k with α_k ∈ [0, 1]^D, initialised to 1. Each step updates the
       model on a training batch with α fixed, then α on a validation batch (first-order
       bi-level): its gradient is normalised per block, g_k / mean|g_k| (so rare blocks move
       as fast as frequent ones), stepped, and clipped to [0, 1].
    2. ``prune`` (procedure): α is merged into the table (Ẽ = E ⊙ α) and the entries of Ẽ
       with the smallest magnitudes are zeroed: the threshold is the magnitude that leaves
       exactly the target count of parameters, the most that fits ``budget`` × full bytes.
       Each id keeps its own set of dims (a mixed-dimension table).
    3. ``retrain`` (train): only the kept entries are parameters; the mask is fixed.

    Stored after pruning (``memory_bytes``): the kept entries in the shared format of pruned
    tables (``SparseRows``: a bitmap or CSR, whichever is smaller); the target count is the
    most entries whose format fits the budget.
    """

    needs_budget = True

    def __init__(self, schema: Schema, config: DNISConfig):
        super().__init__(schema, config)
        rows = list(self.table_rows.values())
        self.register_buffer("row_start", torch.tensor([sum(rows[:t]) for t in range(len(rows))]), persistent=False)
        require_groups(config, sum(rows))
        self.weight = nn.Parameter(torch.empty(sum(rows), config.dim).normal_(std=config.init_std))
        self.alpha = nn.Parameter(torch.ones(config.blocks, config.dim))
        counts = np.concatenate(list(table_counts(schema, config.method).values()))
        self.register_buffer("block_of_row", torch.from_numpy(self.group_rows(counts)), persistent=False)
        self.phase = "search"
        self.target_params, _ = pruned_size(config.method, config, self.table_rows)
        self.sparse: SparseRows | None = None

    def group_rows(self, counts: np.ndarray) -> np.ndarray:
        """Block of each row [R] from its training count [R] (``frequency_blocks``)."""
        return frequency_blocks(counts, self.config.blocks)

    def stages(self) -> list[Stage]:
        return [
            Stage("search", bilevel=True),
            Stage("prune", kind="procedure"),
            Stage("retrain", rewind=self.config.retrain_from == "initial"),
        ]

    # --- forward -------------------------------------------------------------------------

    def embed_ids(self, feature: Tensor, ids: Tensor) -> Tensor:
        rows = self.row_start[self.feature_table[feature]] + ids
        if self.phase == "retrain":
            return self.sparse(rows)
        vectors = F.embedding(rows, self.weight, sparse=True)  # [N, D]
        if self.phase == "search":
            # index_select, not alpha[...]: the backward of advanced indexing adds into α with
            # atomics on several CPU threads, in no fixed order (runs differ by ~1e-9)
            vectors = vectors * self.alpha.index_select(0, self.block_of_row[rows])
        return vectors

    # --- parameters and the bi-level step ------------------------------------------------

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha] if self.phase == "search" else []

    def memory_bytes(self) -> int:
        """The stored format's bytes (before ``retrain``: of the target count, what it stores)."""
        if self.sparse is not None:
            return self.sparse.memory_bytes()
        return format_bytes(self.weight.shape[0], self.dim, self.target_params)[1]

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.sparse.values] if self.sparse is not None else [self.weight]

    def arch_update(self, valid_loss: Tensor, optimizer: Any) -> None:
        """α ← clip(α − η · g / mean|g|, 0, 1) per block, g = ∂(L_valid + λ‖α‖₁)/∂α."""
        loss = valid_loss + self.config.alpha_l1 * self.alpha.abs().sum()
        (grad,) = torch.autograd.grad(loss, [self.alpha])
        self.alpha.grad = grad / (grad.abs().mean(dim=1, keepdim=True) + 1e-8)
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            self.alpha.clamp_(0.0, 1.0)

    # --- stages --------------------------------------------------------------------------

    def begin_stage(self, stage: Stage) -> None:
        if stage.name == "prune":
            self.phase = "pruned"
            self.alpha.requires_grad_(False)
            bits = torch.zeros(self.weight.shape[0], (self.dim + 7) // 8, dtype=torch.uint8, device=self.weight.device)
            self.register_buffer("entry_bits", bits)
        elif stage.name == "retrain":
            self._compact()
            self.phase = "retrain"

    def run_procedure(self, stage: Stage, context: StageContext) -> None:
        """Merges α into the table and keeps the ``target_params`` largest entries."""
        with torch.no_grad():
            merged = self.weight * self.alpha[self.block_of_row]
            magnitude = merged.abs().flatten()
            kept, self.prune_threshold = largest(magnitude, self.target_params)
            mask = kept.view_as(merged)
            self.weight.copy_(merged * mask)
            self.entry_bits.copy_(pack_bits(mask))
        self.pruned_auc = context.score()
        log.info(
            "dnis prune: kept %d of %d entries (|E ⊙ α| >= %.4g); valid auc before retraining %.5f",
            self.target_params, magnitude.numel(), self.prune_threshold, self.pruned_auc,
        )

    def _compact(self) -> None:
        """Stores only the kept entries in the shared format; drops E, α and the prune's mask."""
        self.sparse = SparseRows(self.weight.detach(), unpack_bits(self.entry_bits, self.dim))
        del self.weight, self.alpha, self.entry_bits

    def stage_output(self, stage: Stage) -> dict[str, Tensor]:
        if stage.name == "search":
            return {"alpha": self.alpha.detach().clone()}
        return {"alpha": self.alpha.detach().clone(), "entry_bits": self.entry_bits.clone()} if stage.name == "prune" else {}

    def stage_summary(self, stage: Stage) -> dict[str, Any]:
        if stage.name == "search":
            alpha = self.alpha.detach()
            return {
                "alpha_mean": float(alpha.mean()),
                "alpha_min": float(alpha.min()),
                "alpha_mean_per_block": alpha.mean(1).tolist(),
                "alpha": alpha.tolist(),
            }
        if self.sparse is None:
            mask = unpack_bits(self.entry_bits, self.dim)
        else:
            mask = self.sparse.mask_of(torch.arange(self.sparse.shape[0], device=self.sparse.values.device))
        per_block = torch.zeros(self.config.blocks).index_add_(0, self.block_of_row.cpu(), mask.sum(1).float().cpu())
        rows_per_block = torch.bincount(self.block_of_row.cpu(), minlength=self.config.blocks).clamp(min=1)
        summary: dict[str, Any] = {
            "target_params": self.target_params,
            "kept_params": int(mask.sum()),
            "mean_dims_per_block": (per_block / rows_per_block).tolist(),
            "deployed_bytes": format_bytes(mask.shape[0], self.dim, int(mask.sum()))[1],
        }
        if stage.name == "prune":
            summary.update(threshold=self.prune_threshold, valid_auc_pruned=self.pruned_auc)
        return summary
