"""``dedup``: embedding deduplication — warm-up, L2-LSH block deduplication to the budget, fine-tuning."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctr.embeddings.base import EmbeddingMethod
from ctr.embeddings.budget import FP32_BYTES, BudgetUnreachableError, budget_bytes
from ctr.embeddings.lsh import BlockMatcher
from ctr.embeddings.stages import MultiStageMixin, Stage, StageContext, StagedConfig, refuse_before_stage
from ctr.embeddings.storage import table_starts
from ctr.errors import RecipeError
from ctr.host import memory_bytes
from ctr.registry import EMBEDDINGS
from ctr.schema import Schema

log = logging.getLogger(__name__)

INDEX_BYTES = 4  # a block's unique-block index, int32
CANDIDATE_BYTES = 12  # the LSH index's per block and table: a candidate (int64) and its similarity (float32)
MAX_LSH_ELEMENTS = 10**12  # block elements the merge hashes and compares: L × blocks × block_rows × D


@dataclass
class DedupConfig(StagedConfig):
    """Settings of ``dedup`` (and ``stages.{warmup,finetune}``); ``budget`` is required.

    Args:
        block_rows: consecutive rows of the (all tables') row space per block.
        lsh_tables: L, hash tables of the L2-LSH index (artifact: 90); the index holds
            ``CANDIDATE_BYTES`` a block and table, so L is at most what this machine's memory
            holds for the blocks (``require_lsh_memory``, as the net is built), and its time
            grows as L × the tables' elements (``require_lsh_time``).
        lsh_width: r, bucket width of each L2 hash ⌊(a·v + b) / r⌋ (artifact: 0.09).
        tolerance: elements of two blocks within this distance count as equal (artifact: 0.01).
        similarity: share of equal elements a candidate needs to be merged (artifact: 0.7).
    """

    stage_names = ("warmup", "dedup", "finetune")
    method: str = "dedup"
    block_rows: int = 16
    lsh_tables: int = 90
    lsh_width: float = 0.09
    tolerance: float = 0.01
    similarity: float = 0.7

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block_rows < 1 or self.lsh_tables < 1 or self.lsh_width <= 0 or self.tolerance < 0:
            raise ValueError("block_rows and lsh_tables must be >= 1, lsh_width > 0 and tolerance >= 0")
        if not 0 <= self.similarity <= 1:
            raise ValueError("similarity must be in [0, 1]")


def blocks_to_keep(config: DedupConfig, tables: dict[str, int]) -> tuple[int, int]:
    """(blocks, the most unique blocks the budget holds beside one index per block)."""
    blocks = math.ceil(sum(tables.values()) / config.block_rows)
    block_bytes = config.block_rows * config.dim * FP32_BYTES
    keep = math.floor((budget_bytes(config, "dedup", tables) - INDEX_BYTES * blocks) / block_bytes)
    if keep < 1:
        least = (block_bytes + INDEX_BYTES * blocks) / (sum(tables.values()) * config.dim * FP32_BYTES)
        raise BudgetUnreachableError("dedup", config.budget, least, f"one block index per {config.block_rows} rows needs more")
    return blocks, min(keep, blocks)


def require_lsh_memory(config: DedupConfig, blocks: int) -> None:
    """A RecipeError naming ``embedding.lsh_tables`` when the L2-LSH index of ``blocks``
    blocks (``CANDIDATE_BYTES`` a block and table: ``BlockMatcher``'s candidates and
    similarities [n, L]) needs more than this machine's memory; its time grows as L too (one
    projection of every block a table: ``require_lsh_time``). Checked after that limit, under
    which the index needs at most 12e12 / (``block_rows`` × D) bytes (~44 GiB at 16 × 16): a
    larger machine never reaches this. A saved run is scored, and one past its merge is resumed
    (``refuse_before_stage``)."""
    needed, memory = CANDIDATE_BYTES * blocks * config.lsh_tables, memory_bytes()
    if needed > memory:
        refuse_before_stage(
            "dedup", f"embedding.lsh_tables: {config.lsh_tables} tables of {blocks} blocks need "
            f"~{needed / 2**30:,.1f} GiB for the index's candidates ({CANDIDATE_BYTES} bytes a block and table), more "
            f"than this machine's {memory / 2**30:.1f} GiB; lower it", RecipeError)


def require_lsh_time(config: DedupConfig, blocks: int) -> None:
    """A RecipeError naming ``embedding.lsh_tables`` when the merge would hash and compare
    more than ``MAX_LSH_ELEMENTS`` block elements: each of the L tables projects every block's
    ``block_rows`` × D elements and compares them with its candidate's. The merge ran ~1e8
    elements a second on 2 shared cores (48 s for L = 90 over 211,020 blocks of 16 × 16), so
    the limit is about 3 hours; the full Criteo tables at L = 90, D = 16 need ~5e10. A saved
    run is scored, and one past its merge is resumed (``refuse_before_stage``)."""
    elements = config.lsh_tables * blocks * config.block_rows * config.dim
    if elements > MAX_LSH_ELEMENTS:
        refuse_before_stage(
            "dedup", f"embedding.lsh_tables: {config.lsh_tables} tables of {blocks} blocks of {config.block_rows} × "
            f"{config.dim} elements hash and compare {elements:.3g} elements, past dedup's limit of "
            f"{MAX_LSH_ELEMENTS:.3g} (about 3 hours of merging); lower it", RecipeError)


@EMBEDDINGS.register("dedup", config=DedupConfig)
class DedupEmbedding(MultiStageMixin, EmbeddingMethod):
    """Dedup: embedding deduplication by L2-LSH over blocks of rows.

    The ``Dedup`` method of "Experimental Analysis of Large-scale Learnable Vector Storage
    Compression" (Zhang et al., VLDB 2024; artifact PKU-DAIR/Hetu,
    tools/EmbeddingMemoryCompression), after Zhou et al., "Serving Deep Learning Models with
    Deduplication from Relational Databases", VLDB 2022.

    1. ``warmup`` (train): a full table, all tables' rows end to end.
    2. ``dedup`` (procedure): the rows are cut into blocks of ``block_rows`` rows; blocks are
       visited in ascending order of their 3rd quartile; each is compared with the blocks
       visited before it that share an L2-LSH bucket, and merged into the most similar one
       (share of elements within ``tolerance``) if that share is at least ``similarity``,
       until the unique blocks fit the budget. See ``BlockMatcher`` for the candidates. A
       last block the rows do not fill is zero-padded, compared on its real rows and merged
       into by no block (the artifact's ``DedupTrainer.deduplicate``).
    3. ``finetune`` (train): the unique blocks are trained; each block of ids reads its
       unique block through an index.

    Stored after deduplication (``memory_bytes``): the unique blocks (fp32) + one int32
    index per block. Before it, the full table.

    Deviation: the artifact stops when it runs out of blocks, above the budget if too few
    are similar; here the remaining merges go to each block's most similar candidate
    regardless of ``similarity`` (then to its predecessor in quartile order), so the budget
    always holds. Those forced merges are counted in the stage summary.

    Shapes: ids [N] of features [N] → [N, D].
    """

    needs_budget = True

    def __init__(self, schema: Schema, config: DedupConfig):
        super().__init__(schema, config)
        self.num_blocks, self.keep = blocks_to_keep(config, self.table_rows)
        require_lsh_time(config, self.num_blocks)  # first: the same refusal on a machine of any memory
        require_lsh_memory(config, self.num_blocks)
        rows = self.num_blocks * config.block_rows
        self.weight = nn.Parameter(torch.empty(rows, config.dim).normal_(std=config.init_std))
        self.register_buffer("row_start", table_starts(self.table_rows), persistent=False)
        self.phase = "warmup"
        self.merge_report: dict[str, float] = {}

    def stages(self) -> list[Stage]:
        return [Stage("warmup"), Stage("dedup", kind="procedure"), Stage("finetune")]

    def embed_ids(self, feature: Tensor, ids: Tensor) -> Tensor:
        rows = self.row_start[self.feature_table[feature]] + ids
        if self.phase == "finetune":
            block = self.block_index[rows // self.config.block_rows].long()
            rows = block * self.config.block_rows + rows % self.config.block_rows
        return F.embedding(rows, self.weight, sparse=True)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.weight]

    def begin_stage(self, stage: Stage) -> None:
        if stage.name == "dedup":
            self.phase = "dedup"
            self.register_buffer("block_target", torch.arange(self.num_blocks, device=self.weight.device))
        elif stage.name == "finetune":
            self._compact()
            self.phase = "finetune"

    def run_procedure(self, stage: Stage, context: StageContext) -> None:
        """Merges blocks until ``keep`` unique blocks remain (``block_target``: each block's
        representative), on the CPU; the merged table's validation AUC goes to the summary."""
        blocks = self.weight.detach().cpu().view(self.num_blocks, -1).clone()
        valid = (sum(self.table_rows.values()) - (self.num_blocks - 1) * self.config.block_rows) * self.dim
        blocks[-1, valid:] = 0  # the rows past the tables pad the last block with zeros, as the artifact's
        generator = torch.Generator().manual_seed(context.seed)
        matcher = BlockMatcher(self.config.lsh_tables, self.config.lsh_width, self.config.tolerance, generator)
        target, report = matcher.merge(blocks, self.num_blocks - self.keep, self.config.similarity, valid)
        self.block_target.copy_(target)
        with torch.no_grad():
            self.weight.copy_(self.weight.view(self.num_blocks, -1)[self.block_target].view_as(self.weight))
        self.merge_report = {**report, "valid_auc_merged": context.score()}
        log.info("dedup: %d of %d blocks merged (%d below the similarity)", report["merged"], self.num_blocks, report["forced"])

    def _compact(self) -> None:
        """Keeps the unique blocks as the table and an int32 index per block."""
        unique, index = torch.unique(self.block_target, return_inverse=True)
        blocks = self.weight.detach().view(self.num_blocks, -1)[unique]
        self.register_buffer("block_index", index.to(torch.int32))
        del self.weight, self.block_target
        self.weight = nn.Parameter(blocks.reshape(-1, self.dim).clone())

    def memory_bytes(self) -> int:
        index = getattr(self, "block_index", None)
        extra = 0 if index is None else index.numel() * INDEX_BYTES
        return self.weight.numel() * self.weight.element_size() + extra

    def stage_output(self, stage: Stage) -> dict[str, Tensor]:
        return {"block_target": self.block_target.clone()} if stage.name == "dedup" else {}

    def stage_summary(self, stage: Stage) -> dict[str, Any]:
        summary: dict[str, Any] = {"blocks": self.num_blocks, "unique_blocks_target": self.keep}
        if stage.name == "dedup":
            summary.update(self.merge_report)
        summary["deployed_bytes"] = self.keep * self.config.block_rows * self.dim * FP32_BYTES + INDEX_BYTES * self.num_blocks
        return summary
