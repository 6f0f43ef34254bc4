"""The row-update rules: each optimizer rule defined once, with its hyper-parameters and state.

A rule updates the rows of a table given each row's gradient; the embedding bag's fused
backward applies it to the rows a batch touched while their gradients are computed (so the
table never gets a gradient tensor, as FBGEMM's table-batched embedding does), and the
sparse-gradient optimizers of ``ctr.train.optim`` apply the same rules to a sparse gradient.
Each rule reproduces, on the touched rows, the torch optimizer named below:

- ``sgd``: ``w -= lr * g`` (``torch.optim.SGD``).
- ``adagrad``: ``s += g²``; ``w -= lr * g / (√s + eps)`` per element (``torch.optim.Adagrad``,
  eps 1e-10).
- ``rowwise_adagrad``: ``s += mean(g²)`` with one accumulator per row;
  ``w -= lr * g / (√s + eps)`` (FBGEMM's ``EXACT_ROWWISE_ADAGRAD``, eps 1e-8).
- ``sparse_adam``: lazy Adam: ``m += (1-β1)(g - m)``, ``v += (1-β2)(g² - v)``,
  ``w -= lr·√(1-β2ᵗ)/(1-β1ᵗ) · m / (√v + eps)`` with one step count ``t`` per table
  (``torch.optim.SparseAdam``).

State is fp32 whatever the weight dtype; updates are computed in fp32 and rounded to the
weight dtype to nearest (FBGEMM rounds fp16 stochastically; we do not).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch
from torch import Tensor


class Rule(str, enum.Enum):
    """Optimizer rules a fused backward can apply; values are the optimizer registry names."""

    SGD = "sgd"
    ADAGRAD = "adagrad"
    ROWWISE_ADAGRAD = "rowwise_adagrad"
    ADAM = "sparse_adam"


DEFAULT_EPS = {Rule.SGD: 0.0, Rule.ADAGRAD: 1e-10, Rule.ROWWISE_ADAGRAD: 1e-8, Rule.ADAM: 1e-8}


@dataclass(frozen=True)
class FusedOptimizer:
    """One fused optimizer rule with its hyper-parameters.

    Args:
        rule: a ``Rule`` or its name (``sgd``, ``adagrad``, ``rowwise_adagrad``, ``sparse_adam``).
        lr: learning rate, finite and > 0 (the base lr; a step may be given its scheduled lr,
            ``begin_step``).
        eps: denominator term; ``None`` = the default of the matching torch optimizer.
        betas: Adam's (β1, β2).

    Example:
        >>> opt = FusedOptimizer("rowwise_adagrad", lr=0.05)
        >>> sorted(opt.init_state(torch.zeros(10, 4)))
        ['sum']
    """

    rule: Rule
    lr: float
    eps: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "rule", Rule(self.rule))
        except ValueError:
            names = ", ".join(r.value for r in Rule)
            raise ValueError(f"no fused optimizer {self.rule!r} (choose from {names})") from None
        if self.eps is None:
            object.__setattr__(self, "eps", DEFAULT_EPS[self.rule])
        self._check_values()

    def _check_values(self) -> None:
        """A ValueError, worded as torch.optim's, for a NaN, infinite or out-of-range lr,
        eps or beta (``x <= 0`` lets NaN through)."""
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"Invalid learning rate: fused optimizer lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"Invalid epsilon value: fused optimizer eps must be a finite number >= 0, got {self.eps}")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"Invalid beta parameter: fused optimizer betas must be in [0, 1), got {self.betas}")

    def init_state(self, weight: Tensor) -> dict[str, Tensor]:
        """Zero optimizer state for table ``weight`` [R, D]: name → fp32 tensor."""
        rows, dim = weight.shape
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float32, device=weight.device)  # noqa: E731
        if self.rule is Rule.SGD:
            return {}
        if self.rule is Rule.ADAGRAD:
            return {"sum": zeros(rows, dim)}
        if self.rule is Rule.ROWWISE_ADAGRAD:
            return {"sum": zeros(rows)}
        return {"exp_avg": zeros(rows, dim), "exp_avg_sq": zeros(rows, dim), "step": torch.zeros((), dtype=torch.int64)}

    def begin_step(self, state: dict[str, Tensor], lr: float | None = None) -> float:
        """Advances the step count (Adam) and returns this step's step size.

        Args:
            state: ``init_state``'s tensors (Adam's step count is advanced in place).
            lr: this step's learning rate (a schedule's current lr, finite, ``>= 0``); ``None``: ``self.lr``.

        For Adam the step size is the bias-corrected ``lr·√(1-β2ᵗ)/(1-β1ᵗ)``; for the other
        rules it is ``lr``.
        """
        lr = self.lr if lr is None else lr
        if not (math.isfinite(lr) and lr >= 0):
            raise ValueError(f"Invalid learning rate: fused optimizer step lr must be a finite number >= 0, got {lr}")
        if self.rule is not Rule.ADAM:
            return lr
        state["step"] += 1
        step = int(state["step"])
        beta1, beta2 = self.betas
        return lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
