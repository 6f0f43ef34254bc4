"""``alpt``: Adaptive Low-Precision Training — integer rows with a learnable step per row."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ctr.batch import JaggedFeatures
from ctr.embeddings.base import FP32_BYTES
from ctr.embeddings.quantize import INT_TYPES, QuantizeConfig, QuantizedRows, fixed_ratio, stochastic_round, to_codes
from ctr.embeddings.types import FeatureEmbeddings
from ctr.registry import EMBEDDINGS
from ctr.schema import Schema

MIN_STEP = 1e-8  # a step never reaches zero (rows would stop being representable)


@dataclass
class ALPTConfig(QuantizeConfig):
    """Settings of ``alpt``; ``budget`` is optional (the ratio is fixed).

    Args:
        digit: bits of a stored element, 8 (default, the paper's main setting) or 16.
        scale: the initial step Δ of every row (the artifact's ``init_scale``, 0.01).
        scale_lr: learning rate of the steps (the artifact's 2e-5), SGD on the LSQ gradient
            scaled by 1/√(B·D·Q_p).
        optimizer, lr: the in-lookup update of the rows (see ``int8``).
    """

    method: str = "alpt"
    digit: int = 8
    scale_lr: float = 2e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.digit not in INT_TYPES:
            raise ValueError(f"digit: {self.digit} must be 8 or 16")
        if self.scale_lr < 0:
            raise ValueError("scale_lr must be >= 0")


def lsq_step_gradient(v: Tensor, grad: Tensor, digit: int) -> Tensor:
    """LSQ gradient of the loss w.r.t. each row's step Δ [U, 1], for ŵ = Δ·round(clamp(v))
    with v = w/Δ [U, D] and ∂L/∂ŵ = ``grad`` [U, D]: Σ_j grad_j · (round(v_j) − v_j) inside
    the integer range, Σ_j grad_j · bound where v_j is clamped to a bound."""
    info = torch.iinfo(INT_TYPES[digit])
    inside = torch.round(v) - v
    local = torch.where(v <= info.min, float(info.min), torch.where(v >= info.max, float(info.max), inside))
    return (grad * local).sum(1, keepdim=True)


@EMBEDDINGS.register("alpt", config=ALPTConfig)
class ALPTEmbedding(QuantizedRows):
    """ALPT: integer rows whose quantization step Δ_r is learned per row.

    Li, Dong, Chen, Zhang, Li, Zhang, Tang, "Adaptive Low-Precision Training for Embeddings
    in Click-Through Rate Prediction", AAAI 2023; defaults as the VLDB 2024 benchmark's
    artifact (PKU-DAIR/Hetu, tools/EmbeddingMemoryCompression: ``init_scale`` 0.01,
    ``scale_lr`` 2e-5). Row r stores integers q_r (int8 by default) and a step Δ_r; it reads
    as Δ_r·q_r. A training step on the rows a batch touched: (1) w' = Δ·q − u, u the
    optimizer's step (``stepped``);
    (2) Δ ← Δ − scale_lr · g · ∂L/∂Δ with the LSQ (learned step size quantization) gradient
    of ŵ = Δ·round(w'/Δ) (``lsq_step_gradient``) and LSQ's gradient scale g = 1/√(B·D·Q_p),
    B the training batch's rows (replicated: every rank's part summed), Q_p = 2^(digit−1) − 1
    the largest code (as the artifact's ``scheduler/alpt.py``); (3) q ← SR(w'/Δ), stochastic
    rounding.

    Budget: fixed at digit/32 of the full bytes plus one fp32 step per row (4/(4·D) more;
    at D = 16, 8-bit rows: 0.3125); a smaller budget is refused. ``memory_bytes`` =
    codes + steps, every byte a deployed model keeps (the artifact leaves the steps out).

    Deviation: ∂L/∂ŵ in (2) is this batch's gradient at w, not a second forward pass at w'.

    Shapes: ids [N] of features [N] → [N, D].
    """

    synced_buffers = deployed_buffers = ("codes", "steps")

    def __init__(self, schema: Schema, config: ALPTConfig):
        fixed_ratio(config, "alpt", schema.tables(), sum(schema.tables().values()) * FP32_BYTES)
        super().__init__(schema, config)
        self.register_buffer("steps", torch.full((self.codes.shape[0], 1), config.scale))
        self.batch_rows = 1  # B of the gradient scale: the last training batch's rows (sync_replicas sums the ranks')

    def forward(self, sparse: JaggedFeatures) -> FeatureEmbeddings:
        if self.training:
            self.batch_rows = sparse.batch_size
        return super().forward(sparse)

    def step_gradient_scale(self) -> float:
        """LSQ's g = 1/√(B·D·Q_p) of the steps' gradient."""
        return 1.0 / math.sqrt(max(self.batch_rows, 1) * self.dim * torch.iinfo(INT_TYPES[self.config.digit]).max)

    @torch.no_grad()
    def sync_replicas(self) -> None:
        """As ``QuantizedRows.sync_replicas``; B is the whole batch's rows (every rank's part
        summed), the batch whose mean gradient rank 0 applies."""
        if self.replicated:
            rows = torch.tensor([self.batch_rows], dtype=torch.int64, device=self.codes.device)
            dist.all_reduce(rows)
            self.batch_rows = int(rows.item())
        super().sync_replicas()

    def step_of(self, rows: Tensor) -> Tensor:
        return self.steps[rows]

    @torch.no_grad()
    def apply_update(self, rows: Tensor, grad: Tensor) -> None:
        unique, total, values = self.summed(rows, grad)
        updated = self.stepped(unique, total, values) - self.config.middle
        step = self.steps[unique]
        step_grad = lsq_step_gradient(updated / step, total, self.config.digit)
        step = (step - self.config.scale_lr * self.step_gradient_scale() * step_grad).clamp(min=MIN_STEP)
        self.steps[unique] = step
        self.codes[unique] = to_codes(stochastic_round(updated / step), self.config.digit)
