"""``unified``: Unified Embedding — every feature multiplexed into shared hashed tables."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctr.embeddings.bags import Bags
from ctr.embeddings.base import EmbeddingMethod
from ctr.embeddings.budget import FP32_BYTES, BudgetUnreachableError, budget_bytes, require_budget
from ctr.embeddings.storage import SEED_BYTES, KernelLookup, draw_hash_seeds, universal_hash
from ctr.errors import RecipeError
from ctr.recipe import EmbeddingConfig
from ctr.registry import EMBEDDINGS
from ctr.schema import Schema


@dataclass
class UnifiedConfig(EmbeddingConfig):
    """Settings of ``unified``.

    Args:
        probes: k, the lookups a feature makes (each a chunk of D / k dims, concatenated);
            1 = one lookup of D dims.
        feature_probes: table name (the feature that owns the vocabulary) → its own k
            (multi-size: e.g. more, narrower probes for a huge vocabulary).
    """

    method: str = "unified"
    probes: int = 1
    feature_probes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, k in [("probes", self.probes)] + [(f"feature_probes.{n}", k) for n, k in self.feature_probes.items()]:
            if k < 1 or self.dim % k:
                raise ValueError(f"{key}: {k} probes must divide dim {self.dim}")


@EMBEDDINGS.register("unified", config=UnifiedConfig)
class UnifiedEmbedding(EmbeddingMethod):
    """Unified Embedding: feature multiplexing with multi-probe hashing.

    Coleman et al., "Unified Embedding: Battle-Tested Feature Representations for Web-Scale
    ML Systems", NeurIPS 2023. All features share one hashed table (one per chunk width,
    see below) instead of owning a table each; table t's id x probes it k_t times with hash
    functions salted by table and probe, h_{t,j}(x) = ((a_{t,j}·x + b_{t,j}) mod p) mod M,
    and its embedding is the concatenation of the k_t rows found (multi-probe). Because the
    functions differ per feature, the same raw id of two features lands on different rows,
    and the model can tell features apart in the shared space (the paper's Feature
    Multiplexing analysis).

    Multi-size: each feature may use its own k (``feature_probes``). TensorFlow Recommenders'
    layer concatenates k_f lookups of a fixed width w into a k_f·w-dim embedding; our
    contract gives every feature D dims, so a feature with k probes uses chunks of D / k
    dims, and features with the same chunk width share one table. With a single k (the
    default) there is exactly one unified table for everything.

    Sizing: the budget's bytes, less the hash seeds, are split between the tables of each
    chunk width in proportion to the vocabularies they serve. ``memory_bytes`` = Σ rows ·
    width · 4 + 16 bytes per (table, probe) seed ≤ budget × full.

    Shapes: a bag of n ids of feature f → k_f pooled lookups [k_f, D / k_f] → [D].
    """

    needs_budget = True
    reads_backend = True

    def __init__(self, schema: Schema, config: UnifiedConfig):
        super().__init__(schema, config)
        budget = require_budget(config, "unified")
        allowed = budget_bytes(config, "unified", self.table_rows)
        probes = self._probes_per_table(config)
        widths = sorted({config.dim // k for k in probes}, reverse=True)
        self.table_probes = probes
        self.table_group = [widths.index(config.dim // k) for k in probes]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(rows, width).normal_(std=config.init_std))
            for rows, width in zip(self._group_rows(budget, allowed, probes, widths), widths)
        )
        self.register_buffer("seeds", draw_hash_seeds(sum(probes)))
        self.seed_start = [sum(probes[:t]) for t in range(len(probes))]
        self.register_buffer("table_seed_start", torch.tensor(self.seed_start), persistent=False)
        self.register_buffer("table_group_of", torch.tensor(self.table_group), persistent=False)
        self.lookup = KernelLookup(config.backend)

    def _probes_per_table(self, config: UnifiedConfig) -> list[int]:
        for name in config.feature_probes:
            if name not in self.table_rows:
                raise RecipeError(
                    f"embedding.feature_probes.{name}: no such table (tables: {', '.join(self.table_names)})"
                )
        return [config.feature_probes.get(name, config.probes) for name in self.table_names]

    def _group_rows(self, budget: float, allowed: float, probes: list[int], widths: list[int]) -> list[int]:
        """Rows of each width's table: its share of the floats ``allowed`` bytes hold after the
        seeds (the share of the vocabularies it serves), at least one row; rows added by that
        minimum are taken back from the largest table that keeps one."""
        vocab = list(self.table_rows.values())
        floats = math.floor((allowed - SEED_BYTES * sum(probes)) / FP32_BYTES)
        if floats < sum(widths):
            least = (FP32_BYTES * sum(widths) + SEED_BYTES * sum(probes)) / self.full_bytes()
            why = f"one row of each width ({sum(widths)} floats) and {sum(probes)} hash seeds do not fit"
            raise BudgetUnreachableError("unified", budget, least, why)
        rows = []
        for width in widths:
            served = sum(v for v, k in zip(vocab, probes) if self.dim // k == width)
            rows.append(max(1, math.floor(floats * served / sum(vocab) / width)))
        while sum(r * w for r, w in zip(rows, widths)) > floats:
            largest = max((g for g in range(len(rows)) if rows[g] > 1), key=lambda g: rows[g] * widths[g])
            rows[largest] -= 1
        return rows

    def rows_of(self, table: int, ids: Tensor) -> Tensor:
        """Rows [k, N] of the k probes of table ``table``'s ids [N] in its shared table."""
        k, start = self.table_probes[table], self.seed_start[table]
        pair = self.seeds[start : start + k]
        buckets = self.weights[self.table_group[table]].shape[0]
        return universal_hash(ids.unsqueeze(0), pair[:, :1], pair[:, 1:], buckets)

    def embed_ids(self, feature: Tensor, ids: Tensor) -> Tensor:
        """One vector [N, D] per id: its k probes' rows concatenated, looked up in its own
        width's table only (a lookup in another width's table would put that table's rows, with
        zero gradients, in the sparse gradient, for weight decay and Adam's moments to move)."""
        tables = self.feature_table[feature]
        if len(self.weights) == 1:
            return self._vectors(0, tables, ids)
        if torch.compiler.is_exporting():
            return self._every_width(tables, ids)
        groups = self.table_group_of[tables]
        out = self.weights[0].new_empty(ids.shape[0], self.dim)
        for group in groups.unique().tolist():
            chosen = torch.nonzero(groups == group).squeeze(1)
            out = out.index_copy(0, chosen, self._vectors(group, tables[chosen], ids[chosen]))
        return out

    def _every_width(self, tables: Tensor, ids: Tensor) -> Tensor:
        """``embed_ids`` with every id looked up in every width's table, zero where its table
        has another width: no shape depends on the ids (what ``torch.export`` traces)."""
        out = 0
        for group in range(len(self.weights)):
            keep = (self.table_group_of[tables] == group).unsqueeze(1)
            out = out + self._vectors(group, tables, ids) * keep.to(self.weights[group].dtype)
        return out

    def _vectors(self, group: int, tables: Tensor, ids: Tensor) -> Tensor:
        """Vectors [N, D] of ids [N] of tables [N] in width group ``group``'s table."""
        weight = self.weights[group]
        starts = self.table_seed_start[tables]
        probes = [self._probe(starts + j, ids, weight.shape[0]) for j in range(self.dim // weight.shape[1])]
        return torch.cat([F.embedding(rows, weight, sparse=True) for rows in probes], 1)

    def _probe(self, seed: Tensor, ids: Tensor, buckets: int) -> Tensor:
        """Rows [N] of ids [N] under hash seeds [N] (clamped: an id of a table with fewer
        probes reads a valid row, which ``_every_width`` then zeroes)."""
        pair = self.seeds[seed.clamp(max=self.seeds.shape[0] - 1)]
        return universal_hash(ids, pair[:, 0], pair[:, 1], buckets)

    def embed_bags(self, bags: Bags) -> Tensor:
        if torch.compiler.is_exporting():  # per_feature reads bag boundaries on the host
            return super().embed_bags(bags)
        pieces = []
        for part in bags.per_feature():
            table = int(self.feature_table[part.feature])
            k, weight = self.table_probes[table], self.weights[self.table_group[table]]
            ids = bags.ids[part.ids]
            n, num_bags = ids.numel(), part.offsets.numel() - 1
            rows = self.rows_of(table, ids).reshape(-1)
            starts = part.offsets[:-1].unsqueeze(0) + n * torch.arange(k, device=ids.device).unsqueeze(1)
            offsets = torch.cat([starts.reshape(-1), part.offsets.new_tensor([n * k])])
            weights = None if bags.weights is None else bags.weights[part.ids].repeat(k)
            pooled = self.lookup(weight, rows, offsets, weights)  # [k * bags, D / k]
            pieces.append(pooled.view(k, num_bags, weight.shape[1]).permute(1, 0, 2).reshape(num_bags, self.dim))
        return torch.cat(pieces)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return list(self.weights)
