"""Optimizers: dense ones for MLPs, sparse-capable ones for embedding tables, and the
combined optimizer that steps both as one.

Embedding tables receive sparse gradients (only the rows a batch touched); their optimizer
must update only those rows: ``adagrad``, ``sgd``, ``sparse_adam`` (lazy Adam) and
``rowwise_adagrad`` do.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from ctr.kernels import native
from ctr.kernels.embedding_bag import FusedOptimizer
from ctr.recipe import OptimizerConfig
from ctr.registry import OPTIMIZERS

ParamList = list[nn.Parameter]


FUSED_DEVICES = ("cpu", "cuda")


def fused_kernel(params: ParamList) -> bool:
    """Whether torch's fused (one kernel per tensor) Adam/AdamW can step ``params``: dense
    floating-point tensors on the CPU or a CUDA device. The fused kernel computes the same
    update as the per-tensor loop, without its dozen small ops per tensor (a fixed cost of
    several ms per step on a CPU)."""
    return all(p.is_floating_point() and not p.is_sparse and p.device.type in FUSED_DEVICES for p in params)


@OPTIMIZERS.register("adam")
def adam(params: ParamList, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Adam (dense parameters; weight_decay as L2 in the gradient; fused kernel where torch has one)."""
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused_kernel(params) or None)


@OPTIMIZERS.register("adamw")
def adamw(params: ParamList, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW (dense parameters; decoupled weight decay; fused kernel where torch has one)."""
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused_kernel(params) or None)


@OPTIMIZERS.register("sgd")
def sgd(params: ParamList, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Plain SGD (dense or sparse gradients: only touched rows move)."""
    return torch.optim.SGD(params, lr=cfg.lr)


@OPTIMIZERS.register("adagrad")
class Adagrad(torch.optim.Adagrad):
    """torch's Adagrad (one accumulator per weight, eps 1e-10; sparse gradients update the
    touched rows only) whose sparse fp32 CPU gradients are applied in one native pass per
    table (``ctr.kernels.native``: ``s += g²; w -= lr·g / (√s + eps)`` row by row) instead
    of torch's chain of sparse ops. Same state and rule; results agree to fp32 rounding.
    Anything else (dense or GPU gradients, a closure, weight decay) takes torch's step, through
    which optimizer step hooks (ctr registers none) would run twice.
    """

    def __init__(self, params: ParamList, cfg: OptimizerConfig):
        super().__init__(params, lr=cfg.lr)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        pairs = [(p, group) for group in self.param_groups for p in group["params"] if p.grad is not None]
        if closure is not None or not all(self._native_fits(p, group) for p, group in pairs):
            return super().step(closure)
        for param, group in pairs:
            self._native_update(param, group)
        return None

    def _native_fits(self, param: torch.Tensor, group: dict[str, Any]) -> bool:
        grad = param.grad
        plain = group["weight_decay"] == 0 and not group["maximize"] and not group["differentiable"]
        row_sparse = grad.is_sparse and grad.sparse_dim() == 1 and grad.dense_dim() == 1 and param.dim() == 2
        return plain and row_sparse and grad.dtype == param.dtype and native.usable(param, self.state[param]["sum"])

    def _native_update(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[param]
        state["step"] += 1
        lr = group["lr"] / (1 + (float(state["step"]) - 1) * group["lr_decay"])
        status = _adagrad_sparse(param, param.grad, state["sum"], lr, group["eps"])
        if status == native.NOT_COALESCED:  # rows out of order or repeated: merge them first
            status = _adagrad_sparse(param, param.grad.coalesce(), state["sum"], lr, group["eps"])
        native.check(status, "adagrad_sparse")


def _adagrad_sparse(param: torch.Tensor, grad: torch.Tensor, state_sum: torch.Tensor, lr: float, eps: float) -> int:
    """The native kernel's status for Adagrad on ``param`` [R, D] with sparse ``grad``."""
    rows, values = grad._indices()[0].contiguous(), grad._values().contiguous()
    return native.library().adagrad_sparse(
        native.pointer(rows), native.pointer(values), rows.numel(), param.shape[0], param.shape[1],
        native.pointer(param), native.pointer(state_sum), lr, eps, torch.get_num_threads(),
    )


@OPTIMIZERS.register("sparse_adam")
def sparse_adam(params: ParamList, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Lazy Adam for sparse gradients: moments of touched rows only."""
    return torch.optim.SparseAdam(params, lr=cfg.lr)


@OPTIMIZERS.register("rowwise_adagrad")
class RowWiseAdagrad(torch.optim.Optimizer):
    """Adagrad with one accumulator per row (the mean of the row's squared gradient).

    As in FBGEMM's table-batched embedding: state is [R] instead of [R, D], and with sparse
    gradients only the touched rows are read and written.
    """

    def __init__(self, params: Iterable[nn.Parameter], cfg: OptimizerConfig | None = None, lr: float = 0.01, eps: float = 1e-8):
        super().__init__(params, {"lr": cfg.lr if cfg else lr, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if "sum" not in state:
                    state["sum"] = torch.zeros(param.shape[0], dtype=torch.float32, device=param.device)
                self._update(param, state["sum"], group["lr"], group["eps"])
        return loss

    @staticmethod
    def _update(param: nn.Parameter, accumulator: torch.Tensor, lr: float, eps: float) -> None:
        grad = param.grad
        if grad.is_sparse:
            grad = grad.coalesce()
            rows, values = grad.indices()[0], grad.values()
            accumulator.index_add_(0, rows, values.float().pow(2).mean(1))
            scale = lr / (accumulator[rows].sqrt() + eps)
            param.index_add_(0, rows, (-scale.unsqueeze(1) * values).to(param.dtype))
        else:
            flat = grad.reshape(grad.shape[0], -1)
            accumulator.add_(flat.float().pow(2).mean(1))
            scale = lr / (accumulator.sqrt() + eps)
            param.add_((-scale.view(-1, *[1] * (grad.dim() - 1)) * grad).to(param.dtype))


class CombinedOptimizer(torch.optim.Optimizer):
    """Steps several optimizers as one (one Lightning optimizer, one global step).

    Args:
        parts: name → optimizer (e.g. ``{"dense": adam, "embedding": adagrad}``).
    """

    def __init__(self, parts: dict[str, torch.optim.Optimizer]):
        self.parts = parts
        super().__init__([{"params": []}], {})  # the real groups live in the parts

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [group for opt in self.parts.values() for group in opt.param_groups]

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        """Ignored: ``Optimizer.__init__`` sets it once; the groups live in the parts."""

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure() if closure is not None else None
        for opt in self.parts.values():
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.parts.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.parts.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name, opt in self.parts.items():
            opt.load_state_dict(state_dict[name])


def build_optimizer(cfg: OptimizerConfig, params: ParamList, key_path: str) -> torch.optim.Optimizer:
    """Builds the registered optimizer ``cfg.name`` over ``params``."""
    return OPTIMIZERS.get(cfg.name, f"{key_path}.name").target(params, cfg)


def fused_optimizer(cfg: OptimizerConfig) -> FusedOptimizer:
    """The fused kernel form of embedding optimizer ``cfg`` (same rule, same defaults)."""
    return FusedOptimizer(cfg.name, lr=cfg.lr)
