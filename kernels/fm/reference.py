"""The factorization machine's pairwise term in pure torch (the oracle; runs everywhere).

For fields v_f [B, F, D] and first-order vectors u_f [F, D]:
``out = Σ_f ⟨u_f, v_f⟩ + ½(‖Σ_f v_f‖² − Σ_f ‖v_f‖²)`` and
``∂out/∂v_f = u_f + Σ_j v_j − v_f`` (Rendle, ICDM 2010, Eq. 1 and its O(FD) form, Lemma 3.1).
"""

from __future__ import annotations

import torch
from torch import Tensor


def forward(fields: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """FM output [B] and Σ_f v_f [B, D] of fields [B, F, D]; weight [F, D]."""
    total = fields.sum(1)
    flat = fields.flatten(1)
    squares = torch.linalg.vector_norm(flat, dim=1).square()  # Σ_f ‖v_f‖² in one pass, no temporary
    return flat @ weight.flatten() + 0.5 * (total.pow(2).sum(1) - squares), total


def backward(fields: Tensor, weight: Tensor, total: Tensor, grad: Tensor,
             grad_in: Tensor | None) -> tuple[Tensor, Tensor]:
    """The fields' gradient [B, F, D] (``grad_in`` or zero, plus the FM's, in a new tensor) and
    the gradient of ``weight`` [F, D]. ``grad`` [B] is the output's gradient, ``total`` the
    forward's Σ_f v_f."""
    b, f, d = fields.shape
    grad_fields = torch.zeros_like(fields) if grad_in is None else grad_in.clone()
    grad_fields.addcmul_(fields, grad.view(-1, 1, 1), value=-1.0)
    grad_fields.add_((grad.unsqueeze(1) * total).unsqueeze(1))
    grad_fields.view(b, f * d).addr_(grad, weight.flatten())
    return grad_fields, (grad @ fields.flatten(1)).view_as(weight)


def numeric_fields(sparse: Tensor, dense: Tensor, vectors: Tensor) -> Tensor:
    """The fields [B, S + Nd, D]: sparse fields [B, S, D], then value × vector for each numeric
    feature (dense [B, Nd], vectors [Nd, D])."""
    return torch.cat([sparse, dense.unsqueeze(-1) * vectors], 1)
