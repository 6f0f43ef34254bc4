"""``optembed``: OptEmbed — learned row pruning, a one-shot dimension supernet, evolutionary
search of per-field dimensions, and retraining of the table it found."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctr.batch import JaggedFeatures
from ctr.embeddings.base import EmbeddingMethod
from ctr.embeddings.evolution import EvolutionarySearch, EvolutionConfig
from ctr.embeddings.largest import largest_mask
from ctr.embeddings.sparse import SparseRows, format_bytes, kept_for_budget, pruned_size
from ctr.embeddings.stages import MultiStageMixin, SearchConfig, Stage, StageContext, refuse_before_stage
from ctr.embeddings.types import FeatureEmbeddings
from ctr.errors import RecipeError
from ctr.host import memory_bytes
from ctr.recipe import OptimizerConfig
from ctr.registry import EMBEDDINGS
from ctr.schema import Schema
from ctr.typed import require_at_least

log = logging.getLogger(__name__)

CANDIDATE_BYTES = 256  # the search's per candidate beside 8 a field (measured in all: 141 at 3 fields, 374 at 26)
MAX_CANDIDATES = 10_000  # candidates a search may score (candidates_scored; the defaults score 220)
MAX_GENERATIONS = 1_000  # generations a search may run (the defaults run 10)


class BinaryStep(torch.autograd.Function):
    """Unit step forward; the long-tailed straight-through derivative backward.

    Forward 1[x > 0]. Backward (Liu et al., "Dynamic Sparse Training", ICLR 2020, the
    estimator OptEmbed adopts): d/dx ≈ 2 − 4|x| for |x| ≤ 0.4, 0.4 for 0.4 < |x| ≤ 1, else 0.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        size = x.abs()
        slope = torch.where(size <= 0.4, 2 - 4 * size, torch.where(size <= 1, torch.full_like(x, 0.4), torch.zeros_like(x)))
        return grad * slope


@dataclass
class OptEmbedConfig(SearchConfig, EvolutionConfig):
    """Settings of ``optembed`` (plus the search's: population, parents, mutations,
    crossovers, mutation_prob, generations; and ``stages.{supernet,search,retrain}``). The
    population's bound needs the fields: ``require_population``, as the net is built.

    Args:
        threshold_init: initial pruning threshold t of every field.
        threshold_reg: weight α of the threshold regularizer α · Σ_f exp(−t_f).
        retrain_from: ``initial`` retrains from the weights the net had before the supernet
            (lottery-ticket style; the authors' retrain.py with ``--init_name``); ``supernet``
            from the supernet's.
        arch_optimizer: optimizer of the thresholds.
    """

    stage_names = ("supernet", "search", "retrain")
    method: str = "optembed"
    threshold_init: float = 0.0
    threshold_reg: float = 3e-4
    retrain_from: Literal["initial", "supernet"] = "initial"
    arch_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adam", lr=1e-3))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.parents <= self.population or self.generations < 0:
            raise ValueError("need 1 <= parents <= population and generations >= 0")
        if not 0 < self.mutation_prob <= 1:
            raise ValueError(f"mutation_prob must be in (0, 1], got {self.mutation_prob}")
        require_at_least(self, 0, "mutations", "crossovers")


def require_population(config: OptEmbedConfig, fields: int) -> None:
    """A RecipeError naming ``embedding.population`` past what this machine's memory holds for
    the search (it keeps every candidate drawn, its dims and its score: ``CANDIDATE_BYTES`` + 8
    bytes a field each). A population above the D^F candidates there are is taken: the first
    generation then repeats some, each scored once. Checked after ``require_search_work``: a
    population within its ``MAX_CANDIDATES`` holds at most ~4.6 MB at 26 fields, so only
    fields by the thousands, or a small machine, reach this. A saved run is scored with the
    population it trained with, and one past its search is resumed (``refuse_before_stage``)."""
    needed, memory = config.population * (CANDIDATE_BYTES + 8 * fields), memory_bytes()
    if needed > memory:
        refuse_before_stage(
            "search", f"embedding.population: {config.population} candidates of {fields} fields need "
            f"~{needed / 2**30:,.1f} GiB for the search to hold, more than this machine's {memory / 2**30:,.1f} GiB; "
            "lower it", RecipeError)


def candidates_scored(config: EvolutionConfig) -> int:
    """The most candidates a search scores: ``population`` + ``generations`` × (``mutations``
    + ``crossovers``); each is a pass of the net over the validation split."""
    return config.population + config.generations * (config.mutations + config.crossovers)


def search_keys_to_lower(config: EvolutionConfig) -> list[str]:
    """The keys of ``candidates_scored``, the most to blame first: the larger term (``population``,
    or ``generations`` × (``mutations`` + ``crossovers``)), and within the product its larger
    factor (of ``mutations`` and ``crossovers``, the larger), then the rest the same way."""
    kinds = sorted(("mutations", "crossovers"), key=lambda name: -getattr(config, name))
    children = config.mutations + config.crossovers
    product = ["generations", *kinds] if config.generations >= children else [*kinds, "generations"]
    return ["population", *product] if config.population >= config.generations * children else [*product, "population"]


def scored_at_lowest(config: EvolutionConfig, key: str) -> int:
    """``candidates_scored`` with ``key`` alone at its lowest: ``population`` at ``parents``,
    the others at 0."""
    terms = {name: getattr(config, name) for name in ("population", "generations", "mutations", "crossovers")}
    return candidates_scored(EvolutionConfig(**{**terms, key: config.parents if key == "population" else 0}))


def require_search_work(config: OptEmbedConfig) -> None:
    """A RecipeError naming the key that asks for a search past its limits: more than
    ``MAX_GENERATIONS`` generations, or more than ``MAX_CANDIDATES`` candidates scored
    (``candidates_scored``; the defaults score 220), naming the first key of
    ``search_keys_to_lower`` whose lowering alone brings the count under the limit (the first
    when none does). A saved run is scored, and one past its search is resumed
    (``refuse_before_stage``)."""
    default = EvolutionConfig()
    if config.generations > MAX_GENERATIONS:
        refuse_before_stage(
            "search", f"embedding.generations: {config.generations} generations are past optembed's limit of "
            f"{MAX_GENERATIONS:,} (the defaults run {default.generations}); lower it", RecipeError)
    candidates = candidates_scored(config)
    if candidates > MAX_CANDIDATES:
        keys = search_keys_to_lower(config)
        key = next((name for name in keys if scored_at_lowest(config, name) <= MAX_CANDIDATES), keys[0])
        refuse_before_stage(
            "search", f"embedding.{key}: population {config.population} + generations {config.generations} × "
            f"(mutations {config.mutations} + crossovers {config.crossovers}) score up to {candidates:,} candidates, "
            f"each a pass over the validation split, past optembed's limit of {MAX_CANDIDATES:,} (the defaults score "
            f"{candidates_scored(default)}); lower it", RecipeError)


@EMBEDDINGS.register("optembed", config=OptEmbedConfig)
class OptEmbed(MultiStageMixin, EmbeddingMethod):
    """OptEmbed: learnable row pruning + one-shot dimension search + retraining.

    Lyu et al., "OptEmbed: Learning Optimal Embedding Table for Click-through Rate
    Prediction", CIKM 2022. A field is a vocabulary (table); features that ``share_with``
    a table share its threshold, rows and dimension.

    1. ``supernet`` (train): a row e is kept iff ‖e‖₁ > t_f, the learnable threshold of its
       field: e' = S(‖e‖₁ − t_f) · e with S the unit step and its straight-through gradient
       (``BinaryStep``); the loss adds α · Σ_f exp(−t_f), which pushes thresholds up. For every
       sample and field a dimension d ~ U{1..D} is drawn and only e'[:d] is used (the
       uniform-sampling supernet); evaluation uses all D.
    2. ``search`` (procedure): the row mask is fixed from the thresholds; an evolutionary
       search (population, top-k parents, mutation, crossover, generations) picks dims d_f
       maximising validation AUC of the supernet, keeping the retrained table within
       ``budget`` × full bytes when a budget is set (the paper searches without one).
    3. ``retrain`` (train): each table keeps only its kept rows, d_f dims wide; the net is
       retrained (from its initial weights by default).

    Stored after retraining (``memory_bytes``): the kept entries — the first d_f dims of
    every kept row of field f — in the shared format of pruned tables (``SparseRows``: a
    bitmap or CSR over the [R, D] table, whichever is smaller), counted by the same rule as
    ``deeplight``, ``pep``, ``dnis`` and ``autosrh``. The row mask and dims are implied by the
    stored entries and not stored apart. Pruned ids embed to zeros (the paper's ``zero`` OOV
    mode); dims ≥ d_f are zeros, so outputs are D wide.
    """

    def __init__(self, schema: Schema, config: OptEmbedConfig):
        super().__init__(schema, config)
        if config.budget is not None:
            pruned_size("optembed", config, self.table_rows)  # a budget no kept entry fits: refused before training
        rows = list(self.table_rows.values())
        require_search_work(config)  # first: the same refusal on a machine of any memory
        require_population(config, len(rows))
        self.table_start = [sum(rows[:t]) for t in range(len(rows))]
        self.weight = nn.Parameter(torch.empty(sum(rows), config.dim).normal_(std=config.init_std))
        self.threshold = nn.Parameter(torch.full((len(rows),), config.threshold_init))
        self.register_buffer("dims", torch.full((len(rows),), config.dim, dtype=torch.int64))
        table_of_row = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(rows))
        self.register_buffer("table_of_row", table_of_row, persistent=False)
        self.register_buffer("row_start", torch.tensor(self.table_start, dtype=torch.int64), persistent=False)
        self.pooled_tables = [self.table_names.index(schema.feature(n).table) for n in self.layout.pooled]
        self.phase = "supernet"
        self.sparse: SparseRows | None = None

    def stages(self) -> list[Stage]:
        return [
            Stage("supernet"),
            Stage("search", kind="procedure"),
            Stage("retrain", rewind=self.config.retrain_from == "initial"),
        ]

    # --- forward -------------------------------------------------------------------------

    def forward(self, sparse: JaggedFeatures) -> FeatureEmbeddings:
        out = super().forward(sparse)
        if self.phase == "retrain":
            return out
        if self.training and self.phase == "supernet":
            dims = torch.randint(1, self.dim + 1, (sparse.batch_size, len(self.table_names)), device=out.pooled.device)
        else:
            dims = self.dims.unsqueeze(0).expand(sparse.batch_size, -1)
        return self._keep_dims(out, dims)

    def _keep_dims(self, out: FeatureEmbeddings, dims: Tensor) -> FeatureEmbeddings:
        """Zeroes dims ≥ d of every vector; dims [B, tables]."""
        positions = torch.arange(self.dim, device=dims.device)
        pooled = out.pooled * (positions < dims[:, self.pooled_tables].unsqueeze(-1))
        sequences = {}
        for name, values in out.sequences.items():
            table = self.table_names.index(self.schema.feature(name).table)
            sequences[name] = values * (positions < dims[:, table, None]).unsqueeze(1)
        return FeatureEmbeddings(pooled=pooled, sequences=sequences, masks=out.masks, rows=out.rows)

    def embed_ids(self, feature: Tensor, ids: Tensor) -> Tensor:
        """ids [N] of features [N] → [N, D]."""
        rows = self.row_start[self.feature_table[feature]] + ids
        if self.phase == "retrain":
            return self.sparse(rows)
        vectors = F.embedding(rows, self.weight, sparse=True)  # [N, D]
        if self.phase == "supernet":
            keep = BinaryStep.apply(vectors.abs().sum(1) - self.threshold.index_select(0, self.table_of_row[rows]))
        else:
            keep = self.row_keep[rows].to(vectors.dtype)
        return vectors * keep.unsqueeze(1)

    # --- losses and parameters -----------------------------------------------------------

    def regularizer(self) -> Tensor:
        if self.phase != "supernet":
            return super().regularizer()
        return self.config.threshold_reg * torch.exp(-self.threshold).sum()

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.threshold] if self.phase == "supernet" else []

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.sparse.values] if self.sparse is not None else [self.weight]

    def memory_bytes(self) -> int:
        """After ``retrain``: the stored format's bytes; before it, the method's tensors."""
        return self.sparse.memory_bytes() if self.sparse is not None else super().memory_bytes()

    # --- stages --------------------------------------------------------------------------

    def begin_stage(self, stage: Stage) -> None:
        if stage.name == "search":
            self.phase = "search"
            self.threshold.requires_grad_(False)
            with torch.no_grad():
                keep = self.weight.abs().sum(1) > self.threshold[self.table_of_row]
            if not bool(keep.any()):  # nothing left to search or retrain (the retrain's lookup would fail)
                raise RecipeError(
                    f"embedding.threshold_init: optembed's supernet pruned every row (no row's L1 norm passed its "
                    f"field's threshold, which began at {self.config.threshold_init}): nothing is left to search or "
                    "retrain; start the thresholds lower or the rows larger (embedding.init_std)")
            self.register_buffer("row_keep", keep)
        elif stage.name == "retrain":
            self._compact()
            self.phase = "retrain"

    def kept_rows(self) -> list[int]:
        """Rows each table keeps: by the fixed mask after the supernet, else by the thresholds."""
        with torch.no_grad():
            keep = self.row_keep if self.phase != "supernet" else self.weight.abs().sum(1) > self.threshold[self.table_of_row]
        return torch.bincount(self.table_of_row[keep], minlength=len(self.table_names)).tolist()

    def retrained_bytes(self, dims: tuple[int, ...], kept: list[int]) -> int:
        """``memory_bytes`` the retrained method will have with these dims and kept rows per field."""
        return format_bytes(len(self.table_of_row), self.dim, sum(k * d for k, d in zip(kept, dims)))[1]

    def run_procedure(self, stage: Stage, context: StageContext) -> None:
        limit = None if self.config.budget is None else self.config.budget * self.full_bytes()
        if limit is not None:
            self._cut_rows_to(limit)
        kept = self.kept_rows()

        def score(dims: tuple[int, ...]) -> float:
            self.dims.copy_(torch.tensor(dims))
            return context.score()

        search = EvolutionarySearch(
            len(kept), self.dim, score, lambda dims: self.retrained_bytes(dims, kept), limit,
            np.array(kept, dtype=np.float64) + 1e-9, np.random.default_rng([context.seed, 5]), context.progress,
        )
        result = search.run(self.config)
        self.dims.copy_(torch.tensor(result.best))
        self.search_result = result

    def _cut_rows_to(self, limit: float) -> None:
        """If the kept rows do not fit ``limit`` bytes even at one dim per field, keeps the
        rows with the largest margins ‖e‖₁ − t_f that do (every threshold raised by the same
        amount); the rows cut are counted in ``rows_cut_to_budget``."""
        capacity = kept_for_budget(len(self.table_of_row), self.dim, limit)  # entries = rows at one dim
        self.rows_cut_to_budget = max(int(self.row_keep.sum()) - capacity, 0)
        if not self.rows_cut_to_budget:
            return
        with torch.no_grad():
            margin = self.weight.abs().sum(1) - self.threshold[self.table_of_row]
            margin[~self.row_keep] = -math.inf
            self.row_keep.copy_(largest_mask(margin, capacity))
        log.warning(
            "optembed: the supernet kept more rows than budget %s holds at 1 dim per field; cut %d rows of the smallest margins",
            self.config.budget, self.rows_cut_to_budget,
        )

    def entry_mask(self) -> Tensor:
        """bool [R, D]: the first d_f dims of every kept row of field f (the search's result)."""
        positions = torch.arange(self.dim, device=self.dims.device)
        return self.row_keep.unsqueeze(1) & (positions < self.dims[self.table_of_row].unsqueeze(1))

    def _compact(self) -> None:
        """Stores the kept rows × chosen dims in the shared pruned format (``SparseRows``);
        drops the dense table and the thresholds. The row mask and dims stay as buffers the
        checkpoint leaves out (the stored entries imply them)."""
        self.sparse = SparseRows(self.weight.detach(), self.entry_mask())
        self.register_buffer("row_keep", self.row_keep, persistent=False)
        self.register_buffer("dims", self.dims, persistent=False)
        del self.weight, self.threshold

    def stage_output(self, stage: Stage) -> dict[str, Tensor]:
        if stage.name == "supernet":
            return {"threshold": self.threshold.detach().clone()}
        if stage.name == "search":
            return {"threshold": self.threshold.detach().clone(), "row_keep": self.row_keep.clone(), "dims": self.dims.clone()}
        return {"row_keep": self.row_keep.clone(), "dims": self.dims.clone()}

    def stage_summary(self, stage: Stage) -> dict[str, Any]:
        rows = dict(zip(self.table_names, self.kept_rows()))
        summary: dict[str, Any] = {"kept_rows": rows, "rows": dict(self.table_rows)}
        if stage.name != "retrain":
            summary["thresholds"] = dict(zip(self.table_names, self.threshold.tolist()))
        if stage.name != "supernet":
            summary["dims"] = dict(zip(self.table_names, self.dims.tolist()))
        if stage.name == "search" and hasattr(self, "search_result"):
            summary.update(valid_auc=self.search_result.score, candidates_scored=len(self.search_result.history))
            summary["rows_cut_to_budget"] = getattr(self, "rows_cut_to_budget", 0)
        if stage.name == "retrain":
            summary.update(format=self.sparse.format, memory_bytes=self.memory_bytes())
        return summary
