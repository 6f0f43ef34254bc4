"""Blocks shared by the models: MLP, Dice, field embeddings of numeric features, the
first-order term, FM, cross layers (DCN, DCNv2), the interacting layer (AutoInt) and
target attention (DIN)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctr.kernels.fm import fm, fm_fields

Activation = Literal["relu", "sigmoid", "tanh", "prelu", "dice", "none"]


def activation(name: Activation, width: int | None = None) -> nn.Module:
    """The activation ``name``; ``dice`` needs the layer ``width`` (its statistics are per unit)."""
    if name == "dice":
        if width is None:
            raise ValueError("dice needs the layer width")
        return Dice(width)
    return {
        "relu": nn.ReLU,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "prelu": nn.PReLU,
        "none": nn.Identity,
    }[name]()


class Dice(nn.Module):
    """Data-adaptive activation of DIN (Zhou et al., KDD 2018, Eq. 9).

    ``f(s) = p(s)·s + (1 − p(s))·α·s`` with ``p(s) = sigmoid((s − E[s]) / sqrt(Var[s] + ε))``:
    a PReLU whose rectification point follows the data. E and Var are the mini-batch
    statistics while training and moving averages at inference (a BatchNorm without affine
    parameters); α is learned per unit. A training batch of one row (DIN's attention unit
    sees one row when a batch holds one behaviour in all) has E[s] = s and Var[s] = 0, so
    p(s) = sigmoid(0) = 1/2; the moving averages skip it (an unbiased one-row variance is
    undefined), where BatchNorm would raise, and a batch of no row. A Dice that no training
    batch measured (``norm.num_batches_tracked`` 0: every batch it saw held one row or none)
    has no moving averages, and uses at inference the p = 1/2 that training used throughout.

    Args:
        width: units H; eps: ε (the paper's 1e-8); momentum: of the moving averages.

    Shapes: [N, H] → [N, H].
    """

    def __init__(self, width: int, eps: float = 1e-8, momentum: float = 0.1):
        super().__init__()
        self.norm = nn.BatchNorm1d(width, eps=eps, momentum=momentum, affine=False)
        self.alpha = nn.Parameter(torch.zeros(width))

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] <= 1:
            p = torch.full_like(x, 0.5)
        else:
            p = torch.sigmoid(self.norm(x))
            if not self.training:  # a tensor's test, not Python's: torch.export keeps no guard on the buffer
                p = torch.where(self.norm.num_batches_tracked > 0, p, 0.5)
        return p * x + (1 - p) * self.alpha * x


class MLP(nn.Module):
    """Stack of Linear → (BatchNorm) → activation → (Dropout) layers.

    Args:
        in_dim: input width; hidden: widths of the layers.
        act: activation after each hidden layer (``dice`` gets one Dice per layer).
        out_dim: optional final Linear without activation (e.g. 1 for a logit).
        dropout: dropout after each hidden activation; batch_norm: add BatchNorm1d.

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
            layers.append(activation(act, size))
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


def check_widths(config: object, *names: str) -> None:
    """Raises ``ValueError("<name>: layer widths must be >= 1, ...")`` for the first of ``names``
    (lists of layer widths) holding a width below 1: the recipe reader joins the name to the
    key's path."""
    for name in names:
        widths = getattr(config, name)
        if any(width < 1 for width in widths):
            raise ValueError(f"{name}: layer widths must be >= 1, got {widths}")


@dataclass
class MLPConfig:
    """The MLP keys a model config shares (a mixin of the model configs; recipe keys stay flat).

    Args:
        hidden: widths of the hidden layers; activation: after each of them;
        dropout: after each activation; batch_norm: BatchNorm1d after each Linear.
    """

    hidden: list[int] = field(default_factory=lambda: [400, 400, 400])
    activation: Activation = "relu"
    dropout: float = 0.0
    batch_norm: bool = False

    def __post_init__(self) -> None:
        check_widths(self, "hidden")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def mlp(self, in_dim: int, out_dim: int | None = 1) -> MLP:
        """The MLP these settings describe, from ``in_dim`` inputs to ``out_dim`` outputs."""
        return MLP(in_dim, self.hidden, self.activation, out_dim, self.dropout, self.batch_norm)


class NumericEmbedding(nn.Module):
    """Numeric features as fields: value × a learned vector per feature (AutoInt §4.3,
    Eq. 4, and the way FM-family models treat a real-valued x_i: x_i·v_i).

    Shapes: [B, Nd] → [B, Nd, D].
    """

    def __init__(self, num: int, dim: int, init_std: float = 0.01):
        super().__init__()
        self.vectors = nn.Parameter(torch.randn(num, dim) * init_std)

    def forward(self, dense: Tensor) -> Tensor:
        return dense.unsqueeze(-1) * self.vectors


class FirstOrder(nn.Module):
    """The first-order (linear) term over one-hot ids and numeric values.

    ``logit = b + w·x_dense + Σ_f ⟨u_f, e_f⟩``. The weight of id v of field f is ⟨u_f, e_v⟩:
    linear in the one-hot id and stored in the shared embedding table, so every byte of
    per-id state stays in the embedding method (counted and compressed like the rest).

    Shapes: fields [B, F, D], dense [B, Nd] → [B].
    """

    def __init__(self, num_fields: int, dim: int, num_dense: int):
        super().__init__()
        self.field_weight = nn.Parameter(torch.zeros(num_fields, dim))
        self.dense = nn.Linear(num_dense, 1) if num_dense else None
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, fields: Tensor, dense: Tensor) -> Tensor:
        out = fields.flatten(1) @ self.field_weight.flatten() + self.bias  # one GEMV
        if self.dense is not None:
            out = out + self.dense(dense).squeeze(-1)
        return out


class FactorizationMachine(nn.Module):
    """A factorization machine over field vectors (Rendle, ICDM 2010, Eq. 1):
    ``b + Σ_f ⟨u_f, v_f⟩ + Σ_{i<j} ⟨v_i, v_j⟩``.

    The field vectors are already ``x_i·V_i`` (an id's embedding, or a numeric value times
    its vector), so the first-order weight of field f's id is ⟨u_f, v_f⟩ (see
    ``FirstOrder``) and, for a numeric field, x·⟨u_f, v_f⟩: linear in the value. The pairwise
    term is the ``ctr.kernels.fm`` op: on the CPU in fp32 one C pass over the fields each way
    (assembling them from sparse and numeric features in the same pass, ``with_numeric``);
    elsewhere torch ops, three passes forward and four backward.

    Shapes: [B, F, D] → [B].
    """

    def __init__(self, num_fields: int, dim: int):
        super().__init__()
        self.field_weight = nn.Parameter(torch.zeros(num_fields, dim))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, fields: Tensor) -> Tensor:
        return self.with_shared_input(fields)[0]

    def with_shared_input(self, fields: Tensor) -> tuple[Tensor, Tensor]:
        """The FM's output [B] and ``fields`` for another block that reads them too (DeepFM's
        DNN): the FM adds its gradient in place into that block's, saving a pass and a
        [B, F, D] temporary."""
        out, shared = fm(fields, self.field_weight)
        return out + self.bias, shared

    def with_numeric(self, sparse: Tensor, dense: Tensor, numeric: NumericEmbedding | None) -> tuple[Tensor, Tensor]:
        """``with_shared_input`` over the fields [B, S + Nd, D]: the sparse fields [B, S, D],
        then each numeric value of ``dense`` [B, Nd] times its ``numeric`` vector. Returns the
        FM's output [B] and those fields."""
        if numeric is None:
            return self.with_shared_input(sparse)
        out, fields = fm_fields(sparse, dense, numeric.vectors, self.field_weight)
        return out + self.bias, fields


class CrossNetwork(nn.Module):
    """DCN's cross network (Wang et al., ADKDD 2017, Eq. 3):
    ``x_{l+1} = x_0 · (x_lᵀ w_l) + b_l + x_l``.

    Shapes: [B, W] → [B, W].
    """

    def __init__(self, width: int, layers: int):
        super().__init__()
        self.weights = nn.Parameter(torch.randn(layers, width) / math.sqrt(width))
        self.biases = nn.Parameter(torch.zeros(layers, width))

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for w, b in zip(self.weights, self.biases):
            x = x0 * (x @ w).unsqueeze(1) + b + x
        return x


class CrossNetworkV2(nn.Module):
    """DCN-V2's cross layers (Wang et al., WWW 2021, Eq. 1): ``x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l``.

    With ``low_rank`` r, W_l = U_l V_lᵀ; with ``experts`` K > 1 as well, each layer is the
    mixture of K low-rank experts gated by softmax(G x_l), each ``x_0 ⊙ (U tanh(C tanh(Vᵀ x_l)) + b_l)``
    with an r×r matrix C and the bias shared by the experts (DCN-Mix: the mixture of Eq. 3
    with the experts of Eq. 4, g = tanh).

    Shapes: [B, W] → [B, W].
    """

    def __init__(self, width: int, layers: int, low_rank: int | None = None, experts: int = 1):
        super().__init__()
        if experts > 1 and not low_rank:
            raise ValueError("a mixture of experts needs low_rank")
        self.low_rank, self.experts = low_rank, experts
        if not low_rank:
            self.full = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))
            return
        r, k = low_rank, experts
        self.v = nn.Parameter(torch.randn(layers, k, width, r) / math.sqrt(width))
        self.c = nn.Parameter(torch.randn(layers, k, r, r) / math.sqrt(r)) if k > 1 else None
        self.u = nn.Parameter(torch.randn(layers, k, r, width) / math.sqrt(r))
        self.bias = nn.Parameter(torch.zeros(layers, width))
        self.gate = nn.Linear(width, layers * k, bias=False) if k > 1 else None

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        if not self.low_rank:
            for linear in self.full:
                x = x0 * linear(x) + x
            return x
        for layer in range(self.v.shape[0]):
            x = self._low_rank_layer(layer, x0, x)
        return x

    def _low_rank_layer(self, layer: int, x0: Tensor, x: Tensor) -> Tensor:
        h = torch.einsum("bw,kwr->bkr", x, self.v[layer])  # [B, K, r]
        if self.c is not None:
            h = torch.einsum("bkr,krs->bks", torch.tanh(h), self.c[layer]).tanh()
        out = x0.unsqueeze(1) * (torch.einsum("bkr,krw->bkw", h, self.u[layer]) + self.bias[layer])
        if self.gate is None:
            return out.squeeze(1) + x
        k = self.experts
        gates = F.linear(x, self.gate.weight[layer * k : (layer + 1) * k])  # this layer's rows of G only
        weights = torch.softmax(gates, dim=1)  # [B, K]
        return (weights.unsqueeze(-1) * out).sum(1) + x


class InteractingLayer(nn.Module):
    """AutoInt's interacting layer (Song et al., CIKM 2019, Eq. 5–8).

    Multi-head self-attention over the fields: each head h projects every field e_m with
    W_Q, W_K, W_V, weighs the fields by softmax over ⟨W_Q e_m, W_K e_k⟩ (divided by √d' when
    ``scale``), and the heads' outputs are concatenated; a residual projection W_Res e_m is
    added before the ReLU: ``e_m^Res = ReLU(⊕_h ẽ_m^(h) + W_Res e_m)``.

    Options of the authors' code (shichence/AutoInt, ``model.py``, ``multihead_attention``),
    not in the paper: ``projection_relu`` gives the Q, K, V and residual projections a bias
    and a ReLU; ``layer_norm`` normalises each field's output over its H·d' units (learned
    gain and shift, ε = 1e-8) after the final ReLU.

    Args:
        in_dim: input width per field; head_dim: d'; heads: H; residual: add W_Res e_m;
        scale: divide the scores by √d' (scaled dot-product; Eq. 5 of the paper has none).

    Shapes: [B, F, in_dim] → [B, F, H·d'].
    """

    def __init__(self, in_dim: int, head_dim: int, heads: int, residual: bool = True, scale: bool = True,
                 projection_relu: bool = False, layer_norm: bool = False):
        super().__init__()
        self.heads, self.head_dim, self.scale, self.projection_relu = heads, head_dim, scale, projection_relu
        width = heads * head_dim
        self.qkv = nn.Linear(in_dim, 3 * width, bias=projection_relu)
        self.residual = nn.Linear(in_dim, width, bias=projection_relu) if residual else None
        self.norm = nn.LayerNorm(width, eps=1e-8) if layer_norm else None

    def _project(self, linear: nn.Linear, fields: Tensor) -> Tensor:
        out = linear(fields)
        return torch.relu(out) if self.projection_relu else out

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Every field's softmax-weighted sum of the values: q, k, v [B, H, F, d'] → [B, H, F, d'].
        One field's scores are a product summed, not a matmul: ``torch.export`` would guard the
        batched matmul of [B, H, 1, d'] on B != 1 (the same values; its softmax weight is 1)."""
        scores = (q * k).sum(-1, keepdim=True) if q.shape[-2] == 1 else q @ k.transpose(-1, -2)  # [B, H, F, F]
        if self.scale:
            scores = scores / math.sqrt(self.head_dim)
        weights = torch.softmax(scores, dim=-1)
        return weights * v if q.shape[-2] == 1 else weights @ v

    def forward(self, fields: Tensor) -> Tensor:
        b, f, _ = fields.shape
        qkv = self._project(self.qkv, fields)
        q, k, v = qkv.view(b, f, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = self._attend(q, k, v).transpose(1, 2).reshape(b, f, -1)
        if self.residual is not None:
            out = out + self._project(self.residual, fields)
        out = torch.relu(out)
        return out if self.norm is None else self.norm(out)


UnitInput = Literal["paper", "authors"]


class TargetAttention(nn.Module):
    """DIN's local activation unit and weighted-sum pooling (Zhou et al., KDD 2018, §4.3, Eq. 3).

    For the candidate q and each behaviour k_j, an MLP over the unit input gives the weight
    a_j; the user interest is Σ_j a_j k_j over the valid positions. Unit inputs:

    - ``paper``: ``[k_j, q ⊙ k_j, q]``, Fig. 2's activation unit (inputs from the user, their
      "out product" with the ad, inputs from the ad). Deviation: the paper does not define
      the out product; we take the element-wise product (the form the authors' code uses),
      not the D×D outer product.
    - ``authors``: ``[q, k_j, q − k_j, q ⊙ k_j]``, the authors' code (mouna99/dien
      ``script/utils.py`` ``din_attention``; zhougr1993/DeepInterestNetwork ``din/model.py``
      ``attention``).

    The weights are not normalised by default (the paper drops softmax to keep the intensity
    of interests, §4.3); ``softmax`` normalises them over the valid positions, and ``scale``
    first divides the scores by √E (as DeepInterestNetwork's ``din/model.py`` does; the line
    is commented out in DIEN's ``din_attention``). Padding never counts, and the MLP runs
    only on valid positions, so Dice's statistics ignore padding.

    Args:
        dim: width E of q and k; hidden: the unit's hidden widths; act: their activation.

    Shapes: q [B, E], keys [B, L, E], mask bool [B, L] → [B, E].
    """

    def __init__(self, dim: int, hidden: list[int], act: Activation = "dice", softmax: bool = False,
                 unit_input: UnitInput = "paper", scale: bool = False):
        super().__init__()
        self.unit_input, self.softmax, self.scale = unit_input, softmax, scale
        self.unit = MLP((3 if unit_input == "paper" else 4) * dim, hidden, act=act, out_dim=1)

    def features(self, q: Tensor, k: Tensor) -> Tensor:
        """The activation unit's input for candidates q [N, E] and behaviours k [N, E]: [N, 3E or 4E]."""
        if self.unit_input == "paper":
            return torch.cat([k, q * k, q], dim=1)
        return torch.cat([q, k, q - k, q * k], dim=1)

    def forward(self, q: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        if torch.compiler.is_exporting():
            return self._every_position(q, keys, mask)
        sample, position = mask.nonzero(as_tuple=True)
        scores = self.unit(self.features(q[sample], keys[sample, position])).squeeze(-1)  # [N]
        if self.scale:
            scores = scores / math.sqrt(keys.shape[-1])
        if self.softmax:
            full = scores.new_full(mask.shape, float("-inf")).index_put((sample, position), scores)
            weights = torch.softmax(full, dim=1).nan_to_num(0.0)
        else:
            weights = scores.new_zeros(mask.shape).index_put((sample, position), scores)
        return (weights.unsqueeze(-1) * keys).sum(1)

    def _every_position(self, q: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """The same in evaluation, for ``torch.export``: the unit runs on every position and
        padding is masked after (Dice then normalises by its running statistics, unit by
        unit, so valid positions score as above); no shape depends on the mask."""
        b, length, dim = keys.shape
        qv = q.unsqueeze(1).expand(b, length, dim).reshape(b * length, dim)
        scores = self.unit(self.features(qv, keys.reshape(b * length, dim))).view(b, length)
        if self.scale:
            scores = scores / math.sqrt(dim)
        if self.softmax:
            weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1).nan_to_num(0.0)
        else:
            weights = scores * mask.to(scores.dtype)
        return (weights.unsqueeze(-1) * keys).sum(1)
