"""Blocks shared by the models."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

Activation = Literal["relu", "sigmoid", "tanh", "prelu", "none"]


def activation(name: Activation) -> nn.Module:
    return {
        "relu": nn.ReLU,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "prelu": nn.PReLU,
        "none": nn.Identity,
    }[name]()


class MLP(nn.Module):
    """Stack of Linear → (BatchNorm) → activation → (Dropout) layers.

    Args:
        in_dim: input width; hidden: widths of the layers.
        act: activation after each hidden layer.
        out_dim: optional final Linear without activation (e.g. 1 for a logit).
        dropout: dropout after each hidden activation; batch_norm: add BatchNorm1d.
        final_act: apply ``act`` after the last hidden layer too (True) when out_dim is None.

    Shapes: [B, in_dim] → [B, out_dim or hidden[-1]].
    """

    def __init__(
        self,
        in_dim: int,
        hidden: list[int],
        act: Activation = "relu",
        out_dim: int | None = None,
        dropout: float = 0.0,
        batch_norm: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for size in hidden:
            layers.append(nn.Linear(width, size))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(activation(act))
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        if out_dim is not None:
            layers.append(nn.Linear(width, out_dim))
            width = out_dim
        self.out_dim = width
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
