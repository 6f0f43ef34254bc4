"""The row-update rules of ``rules.py`` in pure torch (the oracle; runs everywhere)."""

from __future__ import annotations

import torch
from torch import Tensor

from ctr.kernels.optim.rules import FusedOptimizer, Rule


@torch.no_grad()
def apply_rows(weight: Tensor, state: dict[str, Tensor], rows: Tensor, grad: Tensor, opt: FusedOptimizer,
               lr: float) -> None:
    """Applies ``opt`` in place to ``weight`` rows ``rows`` [U] given their gradient [U, D].

    Args:
        weight: [R, D] table (any float dtype; updated in fp32, stored rounded).
        state: the optimizer state of ``opt.init_state`` (updated in place).
        rows: int64 [U] distinct rows.
        grad: fp32 [U, D].
        opt: the rule and its hyper-parameters.
        lr: this step's learning rate from ``opt.begin_step``.
    """
    w = weight.index_select(0, rows).float()
    if opt.rule is Rule.SGD:
        w.add_(grad, alpha=-lr)
    elif opt.rule is Rule.ADAGRAD:
        acc = state["sum"].index_select(0, rows).addcmul_(grad, grad)
        state["sum"].index_copy_(0, rows, acc)
        w.addcdiv_(grad, acc.sqrt_().add_(opt.eps), value=-lr)
    elif opt.rule is Rule.ROWWISE_ADAGRAD:
        acc = state["sum"].index_select(0, rows).add_(grad.square().mean(1))
        state["sum"].index_copy_(0, rows, acc)
        w.addcmul_(grad, (lr / acc.sqrt_().add_(opt.eps)).unsqueeze(1), value=-1.0)
    else:
        beta1, beta2 = opt.betas
        m = state["exp_avg"].index_select(0, rows).lerp_(grad, 1 - beta1)
        v = state["exp_avg_sq"].index_select(0, rows).lerp_(grad.square(), 1 - beta2)
        state["exp_avg"].index_copy_(0, rows, m)
        state["exp_avg_sq"].index_copy_(0, rows, v)
        w.addcdiv_(m, v.sqrt_().add_(opt.eps), value=-lr)
    weight.index_copy_(0, rows, w.to(weight.dtype))
