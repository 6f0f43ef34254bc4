"""``mgqe``: Multi-Granular Quantized Embeddings — product-quantized rows, finer for frequent ids."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctr.embeddings.base import BatchLosses, EmbeddingMethod
from ctr.embeddings.budget import FP32_BYTES, BudgetUnreachableError, budget_bytes, table_counts
from ctr.embeddings.replicas import WrittenCodes
from ctr.embeddings.storage import table_starts
from ctr.errors import refuse_for_training
from ctr.recipe import EmbeddingConfig
from ctr.registry import EMBEDDINGS
from ctr.schema import Schema
from ctr.typed import require_at_least

CODE_BYTES = 1  # a code, uint8


@dataclass
class MGQEConfig(EmbeddingConfig):
    """Settings of ``mgqe``; ``budget`` is required.

    Args:
        subspaces: S, the most parts of D quantized separately (paper: 4): the largest
            divisor of D up to it, fewer when the budget cannot hold S codes per id.
        frequent_centroids, rare_centroids: centroids per subspace the frequent and the
            rare ids choose among (paper: 256 and 64; rare ids use the first ones); at least 2:
            a code among K centroids holds log2 K bits, none at K = 1 (every rare id of a table
            would embed as one vector). A saved run with 1 is still scored.
        frequent_fraction: share of each table's ids, by training frequency, that is frequent.
        commitment: β of the commitment loss β·‖e − sg(c)‖².
    """

    method: str = "mgqe"
    subspaces: int = 4
    frequent_centroids: int = 256
    rare_centroids: int = 64
    frequent_fraction: float = 0.1
    commitment: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "subspaces")  # the most parts: subspace_count takes a divisor of D up to it
        if not 1 <= self.rare_centroids <= self.frequent_centroids <= 256:
            raise ValueError("need 2 <= rare_centroids <= frequent_centroids <= 256 (codes are uint8)")
        if self.rare_centroids == 1:
            refuse_for_training("rare_centroids must be >= 2, got 1 (a code among 1 centroid holds log2 1 = 0 bits: "
                                "every rare id of a table would embed as one vector)")
        if not 0 <= self.frequent_fraction <= 1:
            raise ValueError(f"frequent_fraction must be in [0, 1], got {self.frequent_fraction}")
        require_at_least(self, 0, "commitment")


def deployed_bytes(config: MGQEConfig, tables: dict[str, int], subspaces: int) -> int:
    """Codes (one byte per id and subspace) + every table's codebooks (K × D floats)."""
    codes = sum(tables.values()) * subspaces * CODE_BYTES
    return codes + len(tables) * config.frequent_centroids * config.dim * FP32_BYTES


def subspace_count(config: MGQEConfig, tables: dict[str, int]) -> int:
    """The largest S ≤ ``subspaces`` dividing D whose codes and codebooks fit the budget."""
    limit = budget_bytes(config, "mgqe", tables)
    fitting = [s for s in range(config.subspaces, 0, -1) if config.dim % s == 0 and deployed_bytes(config, tables, s) <= limit]
    if not fitting:
        least = deployed_bytes(config, tables, 1) / (sum(tables.values()) * config.dim * FP32_BYTES)
        raise BudgetUnreachableError("mgqe", config.budget, least, "one code per id and the codebooks need more")
    return fitting[0]


def frequent_mask(counts: np.ndarray, fraction: float) -> np.ndarray:
    """Bool [V]: the ⌈fraction · V⌉ ids seen most often in training (never-seen ids excluded)."""
    keep = min(math.ceil(fraction * counts.shape[0]), int((counts > 0).sum()))
    mask = np.zeros(counts.shape[0], dtype=bool)
    mask[np.argsort(-counts, kind="stable")[:keep]] = True
    return mask


@EMBEDDINGS.register("mgqe", config=MGQEConfig)
class MGQEmbedding(WrittenCodes, BatchLosses, EmbeddingMethod):
    """MGQE: Multi-Granular Quantized Embeddings.

    Kang et al., "Learning Multi-granular Quantized Embeddings for Large-Vocab Categorical
    Features in Recommender Systems", WWW 2020 (product quantization as DPQ, Chen et al.,
    ICML 2020, ``vq`` mode). Each table has S codebooks of K = ``frequent_centroids``
    centroids [K, D/S]. During training id x keeps a query row e_x [D]; each part e_x^s
    picks its nearest centroid — among all K if x is among the table's most frequent
    ``frequent_fraction`` ids, else among the first ``rare_centroids`` — and the id embeds
    as the chosen centroids concatenated, with a straight-through gradient to e_x
    (e + sg(c − e)). The loss adds ‖c − sg(e)‖² (moves the centroids) and
    β·‖e − sg(c)‖² (commitment), means over ids and dims. The chosen codes are kept
    (uint8 [R, S]); evaluation embeds from codes and codebooks only, as deployed.

    Sizing: S is the largest divisor of D up to ``subspaces`` whose codes fit ``budget`` ×
    full bytes; the paper's design has no other budget knob, so above about S / (4·D) of
    the full bytes it stores less than the budget. ``memory_bytes`` = codes (1 byte per id
    and subspace) + codebooks (fp32); the query rows are training state, not deployed.

    Deviations: a rare id's code (< 64) is stored in a byte, not packed in 6 bits; the
    artifact's MGQE has no commitment term and keeps small tables as full rows
    (docs/embeddings/mgqe.md compares the two).

    Shapes: ids [N] of features [N] → [N, D].
    """

    needs_budget = True

    def __init__(self, schema: Schema, config: MGQEConfig):
        super().__init__(schema, config)
        counts = table_counts(schema, "mgqe")
        self.subspaces = subspace_count(config, self.table_rows)
        rows = sum(self.table_rows.values())
        frequent = np.concatenate([frequent_mask(counts[name], config.frequent_fraction) for name in self.table_names])
        self.register_buffer("frequent", torch.from_numpy(frequent), persistent=False)
        self.register_buffer("row_start", table_starts(self.table_rows), persistent=False)
        self.register_buffer("codes", torch.zeros(rows, self.subspaces, dtype=torch.uint8))
        part = config.dim // self.subspaces
        self.codebooks = nn.Parameter(torch.empty(len(self.table_names), self.subspaces, config.frequent_centroids, part))
        nn.init.normal_(self.codebooks, std=config.init_std)
        self.weight = nn.Parameter(torch.empty(rows, config.dim).normal_(std=config.init_std))

    def embed_ids(self, feature: Tensor, ids: Tensor) -> Tensor:
        tables = self.feature_table[feature]
        rows = self.row_start[tables] + ids
        if not self.training:
            return self.decode(tables, self.codes[rows].long())
        if ids.numel() == 0:  # no id to quantize: no commitment loss (a mean over none is nan)
            return self.weight.new_zeros(0, self.dim)
        query = F.embedding(rows, self.weight, sparse=True)  # [N, D]
        codes = self.assign(tables, rows)
        self.write_codes(rows, codes)
        centroids = self.decode(tables, codes)
        self.add_loss(
            F.mse_loss(centroids, query.detach()) + self.config.commitment * F.mse_loss(query, centroids.detach())
        )
        return query + (centroids - query).detach()

    def assign(self, tables: Tensor, rows: Tensor) -> Tensor:
        """Nearest allowed centroid [N, S] of each part of the query rows ``weight[rows]``
        (tables [N]), searched once per distinct row and gathered to its occurrences."""
        distinct, occurrence = torch.unique(rows, return_inverse=True)
        table_of = torch.empty_like(distinct).scatter_(0, occurrence, tables)
        parts = self.weight.detach()[distinct].view(distinct.shape[0], self.subspaces, -1).transpose(0, 1)  # [S, U, d]
        codes = torch.empty(distinct.shape[0], self.subspaces, dtype=torch.int64, device=rows.device)
        for table in table_of.unique().tolist():
            chosen = torch.nonzero(table_of == table).squeeze(1)
            codes[chosen] = self._nearest(table, parts[:, chosen], self.frequent[distinct[chosen]])
        return codes[occurrence]

    def _nearest(self, table: int, parts: Tensor, frequent: Tensor) -> Tensor:
        """Codes [n, S] of parts [S, n, d] of one table: ‖c‖² − 2⟨x, c⟩ minimised over all
        centroids for frequent rows [n] and over the first ``rare_centroids`` for the rest.
        In fp32 under any autocast: in bf16 the two terms' cancellation picks farther centroids."""
        book = self.codebooks[table].detach()  # [S, K, d]
        with torch.autocast(parts.device.type, enabled=False):
            squares = (book * book).sum(-1).unsqueeze(1)  # [S, 1, K]
            distance = torch.baddbmm(squares, parts, book.transpose(1, 2), alpha=-2)  # [S, n, K]
        codes = distance[..., : self.config.rare_centroids].argmin(-1)  # [S, n]
        if bool(frequent.any()):
            codes[:, frequent] = distance[:, frequent].argmin(-1)
        return codes.T

    def decode(self, tables: Tensor, codes: Tensor) -> Tensor:
        """Rows [N, D] from codes [N, S] of tables [N]: the chosen centroids concatenated.
        Gathered by ``index_select`` from the flat [T·S·K, D/S] centroids: the backward of
        advanced indexing adds with atomics on several CPU threads, in no fixed order."""
        part = torch.arange(self.subspaces, device=codes.device)
        _, subspaces, centroids, width = self.codebooks.shape
        flat = (tables.unsqueeze(1) * subspaces + part) * centroids + codes  # [N, S]
        return self.codebooks.view(-1, width).index_select(0, flat.flatten()).view(-1, self.dim)

    def memory_bytes(self) -> int:
        return self.codes.numel() * self.codes.element_size() + self.codebooks.numel() * self.codebooks.element_size()

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.weight]
