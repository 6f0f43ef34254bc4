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
from ctr.embeddings.bags import Bags
from ctr.embeddings.base import FP32_BYTES, EmbeddingMethod
from ctr.embeddings.evolution import EvolutionarySearch, EvolutionConfig
from ctr.embeddings.stages import MultiStageMixin, Stage, StageContext, StagedConfig
from ctr.embeddings.storage import KernelLookup, pack_bits
from ctr.embeddings.types import FeatureEmbeddings
from ctr.errors import UserError
from ctr.recipe import OptimizerConfig
from ctr.registry import EMBEDDINGS
from ctr.schema import Schema

log = logging.getLogger(__name__)

INDEX_BYTES = 8


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
class OptEmbedConfig(StagedConfig, EvolutionConfig):
    """Settings of ``optembed`` (plus the search's: population, parents, mutations,
    crossovers, mutation_prob, generations; and ``stages.{supernet,search,retrain}``).

    Args:
        threshold_init: initial pruning threshold t of every field.
        threshold_reg: weight α of the threshold regularizer α · Σ_f exp(−t_f).
        retrain_from: ``initial`` retrains from the weights the net had before the supernet
            (as the authors' code, lottery-ticket style); ``supernet`` from the supernet's.
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
        if not 0 < self.mutation_prob <= 1 or self.mutations < 0 or self.crossovers < 0:
            raise ValueError("mutation_prob must be in (0, 1]; mutations and crossovers >= 0")


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

    Stored after retraining (``memory_bytes``): Σ_f kept_f · d_f · 4 bytes of rows, one bit
    per id of the row mask (the compact row of an id is its rank among the kept ids, an
    index rebuilt from the bitmap at load time and not counted), and the dims (8 bytes a
    field). Pruned ids embed to zeros (the paper's ``zero`` OOV mode). Outputs are
    zero-padded from d_f to D.
    """

    def __init__(self, schema: Schema, config: OptEmbedConfig):
        super().__init__(schema, config)
        rows = list(self.table_rows.values())
        self.table_start = [sum(rows[:t]) for t in range(len(rows))]
        self.weight = nn.Parameter(torch.empty(sum(rows), config.dim).normal_(std=config.init_std))
        self.threshold = nn.Parameter(torch.full((len(rows),), config.threshold_init))
        self.register_buffer("dims", torch.full((len(rows),), config.dim, dtype=torch.int64))
        table_of_row = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(rows))
        self.register_buffer("table_of_row", table_of_row, persistent=False)
        self.register_buffer("row_start", torch.tensor(self.table_start, dtype=torch.int64), persistent=False)
        self.pooled_tables = [self.table_names.index(schema.feature(n).table) for n in self.layout.pooled]
        self.phase = "supernet"
        self.lookup = KernelLookup(config.backend)

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

    def embed_bags(self, bags: Bags) -> Tensor:
        if self.phase == "retrain" and not torch.compiler.is_exporting():  # per_feature reads bounds on the host
            return self._embed_compact(bags)
        return super().embed_bags(bags)

    def embed_ids(self, feature: Tensor, ids: Tensor) -> Tensor:
        if self.phase == "retrain":
            return self._ids_compact(feature, ids)
        rows = self.row_start[self.feature_table[feature]] + ids
        vectors = F.embedding(rows, self.weight, sparse=True)  # [N, D]
        if self.phase == "supernet":
            keep = BinaryStep.apply(vectors.abs().sum(1) - self.threshold.index_select(0, self.table_of_row[rows]))
        else:
            keep = self.row_keep[rows].to(vectors.dtype)
        return vectors * keep.unsqueeze(1)

    def _ids_compact(self, feature: Tensor, ids: Tensor) -> Tensor:
        """[N, D] from the compact tables: pruned rows are zero, dims ≥ d_f zero-padded."""
        tables = self.feature_table[feature]
        if torch.compiler.is_exporting():
            return self._every_compact_table(tables, ids)
        out = self.tables[0].new_zeros(ids.shape[0], self.dim)
        for table in tables.unique().tolist():
            chosen = tables == table
            rows = self.compact_index[self.table_start[table] + ids[chosen]]
            if self.tables[table].shape[0]:
                vectors = F.embedding(rows.clamp(min=0), self.tables[table], sparse=True) * (rows >= 0).unsqueeze(1)
                out[chosen] = F.pad(vectors, (0, self.dim - vectors.shape[1]))
        return out

    def _every_compact_table(self, tables: Tensor, ids: Tensor) -> Tensor:
        """``_ids_compact`` with every id looked up in every compact table (its global row
        clamped) and kept where it is the id's table: no shape depends on the ids (what
        ``torch.export`` traces)."""
        out = self.tables[0].new_zeros(ids.shape[0], self.dim)
        last = self.compact_index.shape[0] - 1
        for table, weight in enumerate(self.tables):
            if not weight.shape[0]:
                continue
            rows = self.compact_index[(self.table_start[table] + ids).clamp(max=last)]
            kept = (tables == table) & (rows >= 0)
            vectors = F.embedding(rows.clamp(0, weight.shape[0] - 1), weight)
            out = torch.where(kept.unsqueeze(1), F.pad(vectors, (0, self.dim - weight.shape[1])), out)
        return out

    def _embed_compact(self, bags: Bags) -> Tensor:
        pieces = []
        for part in bags.per_feature():
            table = int(self.feature_table[part.feature])
            rows = self.compact_index[self.table_start[table] + bags.ids[part.ids]]
            kept = (rows >= 0).to(self.tables[table].dtype)
            weights = kept if bags.weights is None else bags.weights[part.ids] * kept
            if self.tables[table].shape[0]:
                pooled = self.lookup(self.tables[table], rows.clamp(min=0), part.offsets, weights)
            else:
                pooled = kept.new_zeros(part.offsets.numel() - 1, self.tables[table].shape[1])
            pieces.append(F.pad(pooled, (0, self.dim - pooled.shape[1])))
        return torch.cat(pieces)

    # --- losses and parameters -----------------------------------------------------------

    def regularizer(self) -> Tensor:
        if self.phase != "supernet":
            return super().regularizer()
        return self.config.threshold_reg * torch.exp(-self.threshold).sum()

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.threshold] if self.phase == "supernet" else []

    def sparse_parameters(self) -> list[nn.Parameter]:
        return list(self.tables) if self.phase == "retrain" else [self.weight]

    # --- stages --------------------------------------------------------------------------

    def begin_stage(self, stage: Stage) -> None:
        if stage.name == "search":
            self.phase = "search"
            self.threshold.requires_grad_(False)
            with torch.no_grad():
                keep = self.weight.abs().sum(1) > self.threshold[self.table_of_row]
            self.register_buffer("row_keep", keep)
        elif stage.name == "retrain":
            self._compact()
            self.phase = "retrain"

    def kept_rows(self) -> list[int]:
        """Rows each table keeps: by the fixed mask after the supernet, else by the thresholds."""
        if self.phase == "retrain":
            return [t.shape[0] for t in self.tables]
        with torch.no_grad():
            keep = self.row_keep if self.phase == "search" else self.weight.abs().sum(1) > self.threshold[self.table_of_row]
        return torch.bincount(self.table_of_row[keep], minlength=len(self.table_names)).tolist()

    def retrained_bytes(self, dims: tuple[int, ...], kept: list[int]) -> int:
        """``memory_bytes`` the retrained method will have with these dims."""
        rows = sum(k * d for k, d in zip(kept, dims)) * FP32_BYTES
        bitmap = sum((v + 7) // 8 for v in self.table_rows.values())
        return rows + bitmap + INDEX_BYTES * len(dims)

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
        fixed = self.retrained_bytes((0,) * len(self.table_names), [0] * len(self.table_names))
        capacity = math.floor((limit - fixed) / FP32_BYTES)
        if capacity < 1:
            raise UserError(
                f"embedding.budget: {self.config.budget} is too small for optembed: its row bitmap and dims alone take {fixed} bytes"
            )
        self.rows_cut_to_budget = max(int(self.row_keep.sum()) - capacity, 0)
        if not self.rows_cut_to_budget:
            return
        with torch.no_grad():
            margin = self.weight.abs().sum(1) - self.threshold[self.table_of_row]
            margin[~self.row_keep] = -math.inf
            keep = torch.zeros_like(self.row_keep)
            keep[torch.topk(margin, capacity, sorted=False).indices] = True
        self.row_keep.copy_(keep)
        log.warning(
            "optembed: the supernet kept more rows than budget %s holds at 1 dim per field; cut %d rows of the smallest margins",
            self.config.budget, self.rows_cut_to_budget,
        )

    def _compact(self) -> None:
        """Keeps only the kept rows × chosen dims of each table; drops weights and thresholds."""
        tables, index = [], torch.full_like(self.table_of_row, -1)
        for t, start in enumerate(self.table_start):
            keep = self.row_keep[start : start + self.table_rows[self.table_names[t]]]
            kept = torch.nonzero(keep).squeeze(1)
            index[start + kept] = torch.arange(kept.numel(), device=index.device)
            tables.append(nn.Parameter(self.weight.detach()[start + kept, : int(self.dims[t])].clone()))
        bits = torch.cat([pack_bits(self.row_keep[s : s + n]) for s, n in zip(self.table_start, self.table_rows.values())])
        self.tables = nn.ParameterList(tables)
        self.register_buffer("keep_bits", bits)
        self.register_buffer("compact_index", index, persistent=False)
        del self.weight, self.threshold, self.row_keep

    def stage_output(self, stage: Stage) -> dict[str, Tensor]:
        if stage.name == "supernet":
            return {"threshold": self.threshold.detach().clone()}
        if stage.name == "search":
            return {"threshold": self.threshold.detach().clone(), "row_keep": self.row_keep.clone(), "dims": self.dims.clone()}
        return {"keep_bits": self.keep_bits.clone(), "dims": self.dims.clone()}

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
            summary["memory_bytes"] = self.memory_bytes()
        return summary
