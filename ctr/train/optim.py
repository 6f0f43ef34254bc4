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

from ctr.errors import RecipeError
from ctr.kernels.optim import FUSABLE, FusedOptimizer, adagrad_sparse, adagrad_sparse_fits, rowwise_adagrad
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


def decay_gradients(params: Iterable[nn.Parameter], weight_decay: float) -> None:
    """Adds the L2 term ``weight_decay · w`` to each gradient: to every weight of a dense
    gradient, to the rows a sparse one holds (the rows a batch touched: a lazy L2, as the
    sparse update itself is), so untouched rows keep their values."""
    for param in params:
        grad = param.grad
        if grad is None or not weight_decay:
            continue
        if not grad.is_sparse:
            param.grad = grad.add(param.detach(), alpha=weight_decay)
            continue
        grad = grad.coalesce()
        rows = grad.indices()[0]
        values = grad.values().add(param.detach().index_select(0, rows), alpha=weight_decay)
        param.grad = torch.sparse_coo_tensor(grad.indices(), values, grad.shape, is_coalesced=True,
                                             check_invariants=False)


class DecayInGradient(torch.optim.Optimizer):
    """An optimizer built with lr only, whose ``weight_decay`` ctr adds to the gradients
    (``decay_gradients``) before the rule reads them."""

    def __init__(self, params: ParamList, cfg: OptimizerConfig):
        super().__init__(params, lr=cfg.lr)  # the next class in the MRO: torch's optimizer
        self.decay = cfg.weight_decay

    def _decayed(self, closure: Callable[[], Any] | None) -> Any:
        """Runs the closure (its gradients first), decays the gradients; the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        decay_gradients((p for group in self.param_groups for p in group["params"]), self.decay)
        return loss


@OPTIMIZERS.register("sgd")
class SGD(DecayInGradient, torch.optim.SGD):
    """Plain SGD on dense or sparse gradients (only touched rows move), weight decay as L2 in the
    gradient.

    ``weight_decay`` is decayed by ``decay_gradients``: of a sparse gradient, its rows only."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = self._decayed(closure)
        super().step()
        return loss


@OPTIMIZERS.register("adagrad")
class Adagrad(DecayInGradient, torch.optim.Adagrad):
    """torch's Adagrad; one native pass per table applies its sparse fp32 CPU gradients.

    One accumulator per weight, eps 1e-10; sparse gradients update the touched rows only. The
    native pass (``ctr.kernels.optim.adagrad_sparse``: ``s += g²; w -= lr·g / (√s + eps)`` row
    by row) replaces torch's chain of sparse ops. Same state and rule; results agree to fp32 rounding.
    Anything else (dense or GPU gradients) takes torch's step, through which optimizer step
    hooks (ctr registers none) would run twice. ``weight_decay`` is L2 in the gradient
    (``decay_gradients``: of a sparse gradient, its rows only; torch's Adagrad refuses it there).
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = self._decayed(closure)
        pairs = [(p, group) for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not all(self._plain_sparse(p, group) for p, group in pairs):
            super().step()
            return loss
        for param, group in pairs:
            state = self.state[param]
            state["step"] += 1
            lr = group["lr"] / (1 + (float(state["step"]) - 1) * group["lr_decay"])
            adagrad_sparse(param, state["sum"], param.grad, lr, group["eps"])
        return loss

    def _plain_sparse(self, param: torch.Tensor, group: dict[str, Any]) -> bool:
        """Whether the native step applies: a row-sparse gradient, no extras, fp32 CPU tensors."""
        grad = param.grad
        plain = group["weight_decay"] == 0 and not group["maximize"] and not group["differentiable"]
        row_sparse = grad.is_sparse and grad.sparse_dim() == 1 and grad.dense_dim() == 1 and param.dim() == 2
        fits = row_sparse and adagrad_sparse_fits(param, self.state[param]["sum"])
        return plain and fits and grad.dtype == param.dtype


@OPTIMIZERS.register("sparse_adam")
def sparse_adam(params: ParamList, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Lazy Adam for sparse gradients: moments of touched rows only."""
    return torch.optim.SparseAdam(params, lr=cfg.lr)


@OPTIMIZERS.register("rowwise_adagrad")
class RowWiseAdagrad(torch.optim.Optimizer):
    """Adagrad with one accumulator per row (the mean of the row's squared gradient).

    As in FBGEMM's table-batched embedding: state is [R] instead of [R, D], and with sparse
    gradients only the touched rows are read and written. The rule is
    ``ctr.kernels.optim``'s (``Rule.ROWWISE_ADAGRAD``), the one the fused backward applies.
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
                rowwise_adagrad(param, state["sum"], param.grad, group["lr"], group["eps"])
        return loss


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
        """Loads each part's state; a ``FusedLR`` part absent from ``state_dict`` (a checkpoint
        of a fused run from before its lr was a part, when it was always the base lr) keeps
        its base lr."""
        for name, opt in self.parts.items():
            if name not in state_dict and isinstance(opt, FusedLR):
                continue
            opt.load_state_dict(state_dict[name])


def build_optimizer(cfg: OptimizerConfig, params: ParamList, key_path: str) -> torch.optim.Optimizer:
    """Builds the registered optimizer ``cfg.name`` over ``params``; refuses an empty list
    (torch's "optimizer got an empty parameter list" from a model without parameters)."""
    params = list(params)
    if not params:
        raise RecipeError(f"{key_path}: nothing to optimize: neither the model nor the embedding method holds a trainable"
                          " parameter outside the tables (give the model one, e.g. a bias)")
    return OPTIMIZERS.get(cfg.name, f"{key_path}.name").target(params, cfg)


class FusedLR(torch.optim.Optimizer):
    """The fused embedding update's learning rate as an optimizer part (of ``CombinedOptimizer``).

    The fused update runs inside the lookup's backward, so this part steps nothing: it holds
    the lr in one parameter group (no parameters) where schedules set it, checkpoints save it
    (``state_dict``) and the embedding method reads it at every training lookup (``lr``).

    Args:
        lr: the base learning rate (``train.embedding_optimizer.lr``).
    """

    def __init__(self, lr: float):
        super().__init__([{"params": []}], {"lr": lr})

    def lr(self) -> float:
        """The current learning rate."""
        return self.param_groups[0]["lr"]

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Nothing to do: the lookup's backward already updated the rows."""
        return closure() if closure is not None else None


def fused_optimizer(cfg: OptimizerConfig) -> FusedOptimizer:
    """The fused kernel form of embedding optimizer ``cfg`` (same rule, same defaults); a
    RecipeError naming the key when the kernels have no such rule (``FUSABLE``)."""
    if cfg.name not in FUSABLE:
        raise RecipeError(
            f"train.embedding_optimizer.fused: optimizer {cfg.name!r} has no fused form (choose from {', '.join(FUSABLE)})"
        )
    return FusedOptimizer(cfg.name, lr=cfg.lr)


def require_fused_form(cfg: OptimizerConfig) -> None:
    """Refuses (``fused_optimizer``'s RecipeError) a fused table update ``cfg`` has no fused
    form of: ``ctr train`` and each ``ctr tune`` point check it before any work."""
    if cfg.fused:
        fused_optimizer(cfg)
