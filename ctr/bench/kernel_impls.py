"""The implementations ``ctr bench kernels`` times, all on one generated workload.

Each is an ``Impl``: ``forward()`` returns the pooled embeddings of the batch and
``backward(out, grad)`` runs the backward and the optimizer update, so that the pair is one
training step of the embedding tables.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from ctr.kernels.embedding_bag import Backend, FusedOptimizer, fused_embedding_bag, reference
from ctr.kernels.embedding_bag.fbgemm import load_error
from ctr.recipe import OptimizerConfig
from ctr.registry import OPTIMIZERS
from ctr.train import optim as _optim  # noqa: F401  (registers the optimizers)

LR = 0.01


@dataclass
class Workload:
    """T tables of R rows and dim D; a batch of B samples with L ids per table (fixed).

    Args:
        tables, rows, batch, dim, pooling: T, R, B, D, L.
        alpha: Zipf exponent of ids over a table's rows (0 = uniform).
        seed: seed of the ids.
    """

    tables: int
    rows: int
    batch: int
    dim: int
    pooling: int
    alpha: float = 0.0
    seed: int = 0

    def local_ids(self, device: torch.device) -> Tensor:
        """int64 [T, B·L]: each table's ids, in [0, R)."""
        gen = torch.Generator().manual_seed(self.seed)
        count = self.batch * self.pooling
        if self.alpha == 0:
            ids = torch.randint(0, self.rows, (self.tables, count), generator=gen)
        else:
            probs = torch.arange(1, self.rows + 1, dtype=torch.float64).pow(-self.alpha)
            ranks = torch.stack([torch.multinomial(probs, count, replacement=True, generator=gen) for _ in range(self.tables)])
            ids = torch.randperm(self.rows, generator=gen)[ranks]  # scatter the hot rows over the table
        return ids.to(device)

    def offsets(self, bags: int, device: torch.device) -> Tensor:
        """int64 [bags + 1] for bags of exactly L ids."""
        return torch.arange(0, bags * self.pooling + 1, self.pooling, device=device)

    def table_batched(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Global rows [T·B·L] (table t's ids offset by t·R) and offsets [T·B + 1]."""
        ids = self.local_ids(device)
        start = torch.arange(self.tables, device=device).unsqueeze(1) * self.rows
        return (ids + start).reshape(-1), self.offsets(self.tables * self.batch, device)


@dataclass
class Impl:
    """One way to run an embedding training step.

    Args:
        forward: pooled embeddings of the batch.
        backward: ``backward(out, grad)`` runs the backward and the optimizer update.
        grad_shape: the shape of ``forward``'s output.
        load: copies table weights [T, R, D] in (to check that implementations agree).
    """

    forward: Callable[[], Tensor]
    backward: Callable[[Tensor, Tensor], None]
    grad_shape: tuple[int, int]
    load: Callable[[Tensor], None]


def _copier(targets: list[Tensor]) -> Callable[[Tensor], None]:
    @torch.no_grad()
    def load(weights: Tensor) -> None:
        for target, source in zip(targets, weights):
            target.copy_(source)

    return load


def _outside_optimizer(rule: str, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(rule, "--optimizer").target(params, OptimizerConfig(name=rule, lr=LR))


def _step(optimizer: torch.optim.Optimizer) -> Callable[[Tensor, Tensor], None]:
    def backward(out: Tensor, grad: Tensor) -> None:
        out.backward(grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return backward


def loop_impl(work: Workload, rule: str, device: torch.device) -> Impl:
    """One ``nn.EmbeddingBag`` (sparse gradients) per table, outputs concatenated [B, T·D]."""
    bags = nn.ModuleList(
        nn.EmbeddingBag(work.rows, work.dim, mode="sum", sparse=True, include_last_offset=True) for _ in range(work.tables)
    ).to(device)
    ids, offsets = work.local_ids(device), work.offsets(work.batch, device)
    optimizer = _outside_optimizer(rule, list(bags.parameters()))

    def forward() -> Tensor:
        return torch.cat([bag(ids[t], offsets) for t, bag in enumerate(bags)], dim=1)

    return Impl(forward, _step(optimizer), (work.batch, work.tables * work.dim), _copier([b.weight for b in bags]))


def _table(work: Workload, device: torch.device) -> Tensor:
    return torch.randn(work.tables * work.rows, work.dim, device=device) * 0.01


def sparse_grad_impl(work: Workload, rule: str, device: torch.device) -> Impl:
    """``ctr``'s unfused path: one table buffer, sparse gradient, an outside optimizer."""
    weight = nn.Parameter(_table(work, device))
    indices, offsets = work.table_batched(device)
    optimizer = _outside_optimizer(rule, [weight])
    tables = list(weight.detach().view(work.tables, work.rows, work.dim))
    return Impl(
        lambda: reference.embedding_bag(weight, indices, offsets), _step(optimizer),
        (work.tables * work.batch, work.dim), _copier(tables),
    )


def fused_impl(work: Workload, rule: str, backend: Backend, device: torch.device, per_table_sort: bool = False) -> Impl:
    """``ctr``'s fused path on ``backend``: the backward updates the table in place
    (``per_table_sort``: the ids declared as one segment per table, sorted apart)."""
    weight = _table(work, device)
    opt = FusedOptimizer(rule, lr=LR)
    state = opt.init_state(weight)
    indices, offsets = work.table_batched(device)

    def forward() -> Tensor:
        return fused_embedding_bag(weight, state, indices, offsets, None, "sum", opt, backend,
                                   single=work.pooling == 1 and backend is Backend.TRITON, table_segments=work.tables if per_table_sort else 1)

    tables = list(weight.view(work.tables, work.rows, work.dim))
    return Impl(forward, lambda out, grad: out.backward(grad), (work.tables * work.batch, work.dim), _copier(tables))


TBE_RULES = {"sgd": "EXACT_SGD", "adagrad": "EXACT_ADAGRAD", "rowwise_adagrad": "EXACT_ROWWISE_ADAGRAD"}


def tbe_unavailable(rule: str, device: torch.device) -> str | None:
    """Why FBGEMM's ``SplitTableBatchedEmbeddingBagsCodegen`` cannot run here, or ``None``."""
    if importlib.util.find_spec("fbgemm_gpu") is None:
        return "fbgemm_gpu is not installed"
    if rule not in TBE_RULES:
        return f"no exact FBGEMM counterpart of {rule}"
    reason = load_error()
    if reason is not None:
        return reason
    if device.type == "cuda" and not hasattr(torch.ops.fbgemm, "split_embedding_codegen_lookup_sgd_function"):
        return "this fbgemm_gpu build has no CUDA operators"
    return None


def tbe_impl(work: Workload, rule: str, device: torch.device) -> Impl:
    """FBGEMM's table-batched embedding module with its fused optimizer, output [B, T·D]."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice, SplitTableBatchedEmbeddingBagsCodegen,
    )

    on_gpu = device.type == "cuda"
    location = EmbeddingLocation.DEVICE if on_gpu else EmbeddingLocation.HOST
    compute = ComputeDevice.CUDA if on_gpu else ComputeDevice.CPU
    logging.disable(logging.INFO)  # the module logs its whole configuration at INFO
    try:
        module = SplitTableBatchedEmbeddingBagsCodegen(
            [(work.rows, work.dim, location, compute)] * work.tables,
            optimizer=getattr(EmbOptimType, TBE_RULES[rule]), learning_rate=LR, eps=1e-8, device=device,
        )
    finally:
        logging.disable(logging.NOTSET)
    ids = work.local_ids(device).reshape(-1)
    offsets = work.offsets(work.tables * work.batch, device)
    return Impl(
        lambda: module(ids, offsets), lambda out, grad: out.backward(grad), (work.batch, work.tables * work.dim),
        _copier(list(module.split_embedding_weights())),
    )
