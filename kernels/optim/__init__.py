"""The row-update rules (SGD, Adagrad, row-wise Adagrad, lazy Adam): one definition each.

- ``rules.py``: the rules (``Rule``), their hyper-parameters and state (``FusedOptimizer``);
  ``FUSABLE`` lists the rules a fused embedding backward can apply (every backend that
  fuses takes its list from here).
- ``reference.py``: each rule applied to given rows in torch (``apply_rows``), the oracle.
- ``native.py`` + ``rows.c``: Adagrad from a sparse gradient in one C pass on the CPU
  (``adagrad_sparse``); the embedding bag's CPU backward also calls ``rows.c``'s fused
  grouping + Adagrad kernels.
- the Triton form of every rule lives in the embedding bag's fused backward kernel
  (``ctr.kernels.embedding_bag.triton``), the only place that applies rules on a GPU.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ctr.kernels.optim import native
from ctr.kernels.optim.reference import apply_rows
from ctr.kernels.optim.rules import DEFAULT_EPS, FusedOptimizer, Rule

FUSABLE: tuple[str, ...] = tuple(rule.value for rule in Rule)

__all__ = ["DEFAULT_EPS", "FUSABLE", "FusedOptimizer", "Rule", "adagrad_sparse", "adagrad_sparse_fits", "apply_rows", "rowwise_adagrad"]


def adagrad_sparse_fits(weight: Tensor, state_sum: Tensor) -> bool:
    """Whether ``adagrad_sparse`` runs on these tensors here (else take torch's Adagrad step)."""
    return native.fits(weight, state_sum)


def adagrad_sparse(weight: Tensor, state_sum: Tensor, grad: Tensor, lr: float, eps: float) -> None:
    """Adagrad on ``weight`` [R, D] from the row-sparse ``grad`` in one native pass (check
    ``adagrad_sparse_fits`` first)."""
    native.adagrad_sparse(weight, state_sum, grad, lr, eps)


@torch.no_grad()
def rowwise_adagrad(weight: Tensor, state_sum: Tensor, grad: Tensor, lr: float, eps: float) -> None:
    """Row-wise Adagrad (``Rule.ROWWISE_ADAGRAD``) on ``weight`` [R, ...] from a dense or a
    row-sparse gradient; ``state_sum`` [R] fp32; ``lr`` >= 0 (a schedule may reach 0)."""
    opt = FusedOptimizer(Rule.ROWWISE_ADAGRAD, lr=1.0, eps=eps)  # the rule and eps: this step's lr is passed apart
    if grad.is_sparse:
        grad = grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
    else:
        rows, values = torch.arange(weight.shape[0], device=weight.device), grad
    flat = weight.view(weight.shape[0], -1)
    apply_rows(flat, {"sum": state_sum}, rows, values.reshape(rows.numel(), -1).float(), opt, opt.begin_step({}, lr))
