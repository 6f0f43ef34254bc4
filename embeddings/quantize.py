"""``int8``, ``int16``: low-precision training — tables stored as integers with a scale,
updated in place with stochastic rounding."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

from ctr.embeddings.base import EmbeddingMethod
from ctr.embeddings.budget import BudgetUnreachableError, full_bytes
from ctr.embeddings.replicas import broadcast_rows, gather_records
from ctr.embeddings.storage import table_starts
from ctr.kernels.optim import FusedOptimizer, apply_rows
from ctr.recipe import EmbeddingConfig
from ctr.registry import EMBEDDINGS
from ctr.schema import Schema

INT_TYPES = {8: torch.int8, 16: torch.int16}


@dataclass
class QuantizeConfig(EmbeddingConfig):
    """Settings of ``int8`` / ``int16``; ``budget`` is optional (the ratio is fixed).

    Args:
        digit: bits of a stored element, fixed by the method (``int8``: 8, ``int16``: 16;
            not a recipe key).
        scale: the quantization step s (the artifact's 0.01): element = middle + s·q.
        middle: the zero point (the artifact's 0).
        optimizer: the in-lookup update w ← SR(w − Δ): ``rowwise_adagrad`` (default; Δ =
            lr·g / (√S_r + eps), S_r += mean_j g_rj², one fp32 state per row: the project's
            ``rowwise_adagrad`` rule, FBGEMM's, eps 1e-8) or ``sgd`` (Δ = lr·g, the
            artifact's rule). The table has no fp32 copy for ``train.embedding_optimizer``
            to keep state in, so that optimizer does not apply to it.
        lr: learning rate of that update (0.05, the recipes' table Adagrad rate; the
            artifact's SGD used 1e-3).
    """

    method: str = "int8"
    digit: int = field(default=8, init=False)
    scale: float = 0.01
    middle: float = 0.0
    optimizer: Literal["rowwise_adagrad", "sgd"] = "rowwise_adagrad"
    lr: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale <= 0 or self.lr <= 0:
            raise ValueError("scale and lr must be > 0")


@dataclass
class Int16Config(QuantizeConfig):
    """Settings of ``int16`` (as ``int8``'s, 16-bit elements)."""

    method: str = "int16"
    digit: int = field(default=16, init=False)


def stochastic_round(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """⌊x + u⌋ with u ~ U[0, 1) per element: rounds up with probability frac(x), so the
    expectation is x (unbiased). Float [...] → float [...] of integers."""
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.floor(x + noise)


def to_codes(x: Tensor, digit: int) -> Tensor:
    """Integers in float ``x`` [...] clamped to the signed ``digit``-bit range, as that dtype."""
    info = torch.iinfo(INT_TYPES[digit])
    return x.clamp(info.min, info.max).to(INT_TYPES[digit])


def fixed_ratio(config: QuantizeConfig, method: str, tables: dict[str, int], extra: int) -> None:
    """Refuses a budget below the method's fixed ratio: digit/32 of the full bytes plus
    ``extra`` bytes (scales)."""
    full = full_bytes(tables, config.dim)
    need = sum(tables.values()) * config.dim * config.digit // 8 + extra
    if config.budget is not None and config.budget * full < need:
        why = f"{config.digit}-bit rows store {need} bytes"
        raise BudgetUnreachableError(method, config.budget, need / full, why)


class QuantizedRows(EmbeddingMethod):
    """Integer rows (``codes`` [R, D], int8/int16) of every table laid end to end; a
    training lookup returns the dequantized rows as a leaf whose gradient updates the codes
    in place (``apply_update``), so no fp32 table exists at any time. Replicated, the
    backward only records the rows and gradients, and ``sync_replicas`` applies them."""

    updates_in_backward = True
    synced_buffers: tuple[str, ...] = ("codes",)  # what ``apply_update`` writes
    deployed_buffers: tuple[str, ...] = ("codes",)  # what ``memory_bytes`` counts

    def __init__(self, schema: Schema, config: QuantizeConfig):
        super().__init__(schema, config)
        rows = sum(self.table_rows.values())
        self.register_buffer("row_start", table_starts(self.table_rows), persistent=False)
        initial = torch.randn(rows, config.dim) * config.init_std
        self.register_buffer("codes", to_codes(stochastic_round((initial - config.middle) / config.scale), config.digit))
        self.optimizer = FusedOptimizer(config.optimizer, lr=config.lr)
        if config.optimizer == "rowwise_adagrad":  # training state: not deployed, not counted
            self.register_buffer("square_sums", torch.zeros(rows))
            self.synced_buffers = (*self.synced_buffers, "square_sums")
        self._pending: list[tuple[Tensor, Tensor]] = []  # (rows [N], gradients [N, D]) until sync_replicas

    def step_of(self, rows: Tensor) -> Tensor:
        """Quantization step of each row [N, 1]."""
        raise NotImplementedError

    def memory_bytes(self) -> int:
        """The deployed buffers; the optimizer's state is training-only."""
        return sum(getattr(self, name).numel() * getattr(self, name).element_size() for name in self.deployed_buffers)

    def embed_ids(self, feature: Tensor, ids: Tensor) -> Tensor:
        rows = self.row_start[self.feature_table[feature]] + ids
        values = self.config.middle + self.codes[rows].float() * self.step_of(rows)
        if not (self.training and torch.is_grad_enabled()):
            return values
        values.requires_grad_()
        update = self._record if self.replicated else self.apply_update
        values.register_hook(lambda grad: update(rows, grad))
        return values

    def _record(self, rows: Tensor, grad: Tensor) -> None:
        self._pending.append((rows, grad))

    @torch.no_grad()
    def sync_replicas(self) -> None:
        """Applies every rank's recorded gradients (rows [N], gradients [N, D], each rank's
        scaled by the world size: their mean is the whole batch's) in one update on rank 0,
        whose updated rows (rounded with its noise) every rank then takes."""
        if not self.replicated:
            return
        empty = (self.row_start.new_zeros(0), torch.zeros(0, self.dim, device=self.codes.device))
        rows, grad = gather_records(self._pending, empty)
        self._pending = []
        if dist.get_rank() == 0:
            self.apply_update(rows, grad / dist.get_world_size())
        unique = torch.unique(rows)
        for name in self.synced_buffers:
            broadcast_rows(getattr(self, name), unique)

    def summed(self, rows: Tensor, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Unique rows [U], their summed gradients [U, D] and current values [U, D]."""
        unique, inverse = torch.unique(rows, return_inverse=True)
        total = grad.new_zeros(unique.numel(), grad.shape[1]).index_add_(0, inverse, grad)
        return unique, total, self.config.middle + self.codes[unique].float() * self.step_of(unique)

    def stepped(self, unique: Tensor, total: Tensor, values: Tensor) -> Tensor:
        """``values`` [U, D] of rows ``unique`` [U] after the optimizer's step (w − Δ) on their
        summed gradients ``total`` [U, D], in place; ``rowwise_adagrad`` also advances its
        state of those rows."""
        local = torch.arange(unique.numel(), device=unique.device)
        state = {"sum": self.square_sums[unique]} if self.config.optimizer == "rowwise_adagrad" else {}
        apply_rows(values, state, local, total, self.optimizer, self.config.lr)
        if state:
            self.square_sums[unique] = state["sum"]
        return values

    @torch.no_grad()
    def apply_update(self, rows: Tensor, grad: Tensor) -> None:
        """w ← middle + s·SR((w − Δ − middle) / s) on the rows [N] a gradient [N, D] touched."""
        unique, total, values = self.summed(rows, grad)
        updated = self.stepped(unique, total, values)
        step = self.step_of(unique)
        self.codes[unique] = to_codes(stochastic_round((updated - self.config.middle) / step), self.config.digit)


@EMBEDDINGS.register("int8", config=QuantizeConfig)
@EMBEDDINGS.register("int16", config=Int16Config)
class QuantizedEmbedding(QuantizedRows):
    """Low-precision training (LPT) of full tables: signed 8-bit (int8) or 16-bit (int16) elements.

    As the VLDB 2024 benchmark's ``quantize`` (Zhang et al., "Experimental Analysis of
    Large-scale Learnable Vector Storage Compression", VLDB 2024; PKU-DAIR/Hetu
    tools/EmbeddingMemoryCompression), with the stochastic rounding of Gupta et al., "Deep
    Learning with Limited Numerical Precision", ICML 2015. Every element is stored as a signed 8- or 16-bit integer q and read as
    middle + s·q with one fixed step s; the update rounds w − u (u: the optimizer's step,
    ``stepped``) stochastically back onto the grid, so small steps move rows in expectation.
    Deviation: u is row-wise Adagrad by default where the artifact uses SGD (see
    docs/embeddings/int8.md: ctr's recipes train full tables with Adagrad).

    Budget: fixed at digit/32 of the full bytes (int8: 0.25, int16: 0.5); a smaller
    ``embedding.budget`` is refused (``BudgetUnreachableError``), a larger one is met.
    ``memory_bytes`` = R·D·digit/8: the step and zero point are recipe constants (like D),
    not stored per model.

    Shapes: ids [N] of features [N] → [N, D].
    """

    def __init__(self, schema: Schema, config: QuantizeConfig):
        fixed_ratio(config, config.method, schema.tables(), 0)
        super().__init__(schema, config)

    def step_of(self, rows: Tensor) -> Tensor:
        return torch.full((rows.numel(), 1), self.config.scale, device=rows.device)
