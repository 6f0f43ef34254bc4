"""``din``: Deep Interest Network (Zhou et al., KDD 2018, arXiv:1706.06978)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ctr.batch import Batch
from ctr.embeddings.replicas import gather_padded
from ctr.embeddings.types import EmbeddingLayout, FeatureEmbeddings
from ctr.errors import DataError, RecipeError, refuse_for_training
from ctr.models.base import CTRModel
from ctr.models.layers import Activation, MLPConfig, TargetAttention, UnitInput, check_widths
from ctr.recipe import ModelConfig
from ctr.registry import MODELS
from ctr.schema import PAD_ID, Schema


Variant = Literal["paper", "authors", "ctr"]
InputNorm = Literal["none", "batch", "inference"]
TF_BN_EPSILON = 1e-3  # tf.layers.batch_normalization's default epsilon
UNALIGNED_BEHAVIOURS = ("DIN's behaviour sequences need the same number of items in a row (an empty item, a^^b, "
                        "is dropped from a sequence)")


@dataclass
class DINConfig(MLPConfig, ModelConfig):
    """DIN settings (defaults: the paper, Fig. 2).

    Args:
        variant: which published form (see ``DIN``): ``paper`` (default), ``authors`` (the
            authors' later code, DIEN's ``Model_DIN``) or ``ctr`` (ctr's own variant).
        target_fields: the candidate's features, e.g. ``[item_id, cat_id]``; their embeddings
            are concatenated into the query.
        sequence_fields: the behaviour sequences aligned with them, e.g.
            ``[hist_item_id, hist_cat_id]`` (per-position features, ``pooling: none``).
            Both default to every per-position sequence whose ``share_with`` names a pooled
            feature, paired with that feature; one given alone, the other follows ``share_with``.
        attention_hidden: hidden widths of the local activation unit (paper: 36; the
            authors' code: 80-40).
        attention_activation: of the activation unit (paper: dice or prelu; the authors'
            code: sigmoid).
        attention_input: the activation unit's input, ``paper`` ``[k, q ⊙ k, q]`` or
            ``authors`` ``[q, k, q − k, q ⊙ k]`` (``None``: the variant's).
        softmax: normalise the attention weights (``None``: the variant's; paper: off).
        attention_scale: divide the scores by √E (before the softmax, when on) (zhougr1993/
            DeepInterestNetwork ``din/model.py``; off in DIEN's ``din_attention``).
        hidden, activation, dropout, batch_norm: the top MLP (paper: 200-80, dice).
        input_norm: of the top MLP's input (``None``: the variant's): ``none``, ``batch``
            (BatchNorm) or ``inference`` (the authors' code: TF's batch normalization in
            inference mode, ``InferenceBatchNorm``; the ``authors`` default).
        l2_reg: λ of the mini-batch aware regularization (0 = off).
    """

    name: str = "din"
    variant: Variant = "paper"
    target_fields: list[str] | None = None
    sequence_fields: list[str] | None = None
    attention_hidden: list[int] = field(default_factory=lambda: [36])
    attention_activation: Activation = "dice"
    attention_input: UnitInput | None = None
    softmax: bool | None = None
    attention_scale: bool = False
    hidden: list[int] = field(default_factory=lambda: [200, 80])
    activation: Activation = "dice"
    input_norm: InputNorm | None = None
    l2_reg: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_widths(self, "attention_hidden")
        self._check_named_once()
        if self.l2_reg < 0:
            raise ValueError(f"l2_reg must be >= 0, got {self.l2_reg}")

    def _check_named_once(self) -> None:
        """Refuses a behaviour sequence named twice (attended over twice: its embeddings twice in
        the keys, its candidate's in the query), given in ``sequence_fields`` or following
        ``share_with`` from a candidate field named twice. Two sequences may pair with one
        candidate field (``target_fields: [item, item]``, ``sequence_fields: [clicks, buys]``).
        A run saved with one by an earlier ctr is scored as trained (``refuse_for_training``)."""
        key = "target_fields" if self.sequence_fields is None else "sequence_fields"
        names = getattr(self, key) or []
        twice = next((name for i, name in enumerate(names) if name in names[:i]), None)
        if twice is not None:
            refuse_for_training(f"{key}: names {twice!r} twice; name each feature once")

    @property
    def unit_input(self) -> UnitInput:
        """The activation unit's input: ``attention_input``, else the variant's."""
        return self.attention_input or ("paper" if self.variant == "paper" else "authors")

    @property
    def top_input_norm(self) -> InputNorm:
        """The top MLP's input normalisation: ``input_norm``, else the variant's."""
        return self.input_norm or ("inference" if self.variant == "authors" else "none")

    @property
    def normalise(self) -> bool:
        """Whether attention weights are normalised: ``softmax``, else the variant's."""
        return self.variant != "paper" if self.softmax is None else self.softmax


@MODELS.register("din", config=DINConfig)
class DIN(CTRModel):
    """Deep Interest Network: user interest pooled from behaviours, weighted by the candidate.

    The candidate's field embeddings form the query q; each behaviour k_j (the aligned
    sequence embeddings at position j) gets the weight a_j of the local activation unit,
    and the interest is Σ_j a_j k_j over the valid positions (paper Eq. 3;
    ``TargetAttention``). Other per-position sequences are mean-pooled. The top MLP reads,
    per ``variant``:

    - ``paper`` (Fig. 2): every pooled field (the candidate among them), the interest, the
      numeric values; unit input ``[k_j, q ⊙ k_j, q]``, weights not normalised, Dice.
    - ``authors``: the authors' later code, mouna99/dien ``script/model.py`` ``Model_DIN``
      (attention: ``script/utils.py`` ``din_attention``; top MLP: ``Model.build_fcn_net``):
      the pooled fields, the plain sum of the history Σ_j k_j, the candidate times that sum
      q ⊙ Σ_j k_j and the interest, through the authors' normalisation (``InferenceBatchNorm``)
      before the first layer; unit input
      ``[q, k_j, q − k_j, q ⊙ k_j]`` and softmax over the valid positions (unscaled, as
      ``din_attention``). Their 2-way softmax output is one logit here.
    - ``ctr``: ctr's own variant, in no paper or reference code: the paper's top input plus
      the candidate times the attention-pooled interest, q ⊙ Σ_j a_j k_j; unit input
      ``[q, k_j, q − k_j, q ⊙ k_j]``; softmax.

    Mini-batch aware regularization (the paper's "Mini-batch Aware Regularization", §5.1,
    Eq. 6–7): with ``l2_reg`` = λ the loss gains
    ``λ/2 · Σ_j ‖w_j‖² / n_j`` over the distinct embedding rows j present in the batch
    (padding excluded), n_j the row's frequency in the training data (the schema's counts),
    so the gradient of row j is the paper's λ·w_j/n_j and rows absent from the batch are
    not touched. Data-parallel, each rank weighs its rows by W/k_j (``ranks_share``), so the
    averaged gradient is the whole batch's λ·w_j/n_j for a row on any k_j of the W ranks.

    Shapes: pooled [B, F, D], sequences [B, L, D], masks [B, L] → logits [B].
    """

    def __init__(self, schema: Schema, layout: EmbeddingLayout, config: DINConfig):
        super().__init__(schema, layout, config)
        self.targets, self.behaviours = self._pairs(schema, layout, config)
        self._unaligned = (f"model.sequence_fields: DIN reads {self.behaviours} position by position, and a row's "
                           f"sequences differ in length; {UNALIGNED_BEHAVIOURS}")
        self.target_index = [layout.pooled.index(name) for name in self.targets]
        self.others = [name for name in layout.sequences if name not in self.behaviours]
        width = len(self.targets) * layout.dim
        self.attention = TargetAttention(width, config.attention_hidden, config.attention_activation,
                                         config.normalise, config.unit_input, config.attention_scale)
        extra = {"paper": 0, "authors": 2 * width, "ctr": width}[config.variant]
        mlp_in = (len(layout.pooled) + len(self.others)) * layout.dim + width + extra + self.num_dense
        self.input_norm = {"none": nn.Identity, "batch": nn.BatchNorm1d, "inference": InferenceBatchNorm}[
            config.top_input_norm](mlp_in)
        self.mlp = config.mlp(mlp_in)
        if config.l2_reg:
            self._register_counts(schema)

    @staticmethod
    def _pairs(schema: Schema, layout: EmbeddingLayout, config: DINConfig) -> tuple[list[str], list[str]]:
        shares = [(schema.feature(s).spec.share_with, s) for s in layout.sequences]
        pairs = [(target, sequence) for target, sequence in shares if target in layout.pooled]
        targets, behaviours = config.target_fields, config.sequence_fields
        if behaviours is None:  # a key left out follows share_with from the other
            behaviours = ([s for _, s in pairs] if targets is None else
                          [s for t in targets for target, s in pairs if target == t])
        if targets is None:
            targets = [target for s in behaviours for target, sequence in pairs if sequence == s]
        if not targets or not behaviours or len(targets) != len(behaviours):
            raise RecipeError(
                "model.sequence_fields: DIN needs behaviour sequences (pooling: none) aligned with "
                f"model.target_fields; got targets {targets} and sequences {behaviours} "
                f"(per-position sequences in the data: {list(layout.sequences)})"
            )
        for key, names, allowed, kind in (("target_fields", targets, layout.pooled, "pooled features"),
                                          ("sequence_fields", behaviours, layout.sequences,
                                           "per-position sequences (pooling: none)")):
            missing = [n for n in names if n not in allowed]
            if missing:
                pooled_sequence = key == "sequence_fields" and all(n in layout.pooled for n in missing)
                hint = "; they are pooled: give them pooling: none" if pooled_sequence else ""
                raise RecipeError(f"model.{key}: {missing} not among the data's {kind} {list(allowed)}{hint}")
        shapes = {name: (schema.feature(name).spec.max_len, schema.feature(name).spec.padding) for name in behaviours}
        if len(set(shapes.values())) > 1:  # concatenated position by position (mlp_input)
            got = "; ".join(f"{name}: max_len {length}, padding {side}" for name, (length, side) in shapes.items())
            raise RecipeError(f"model.sequence_fields: DIN reads {behaviours} position by position, so they need one "
                              f"max_len and padding (data.features); got {got}")
        return targets, behaviours

    def forward(self, batch: Batch, embedded: FeatureEmbeddings) -> Tensor:
        return self.mlp(self.input_norm(self.mlp_input(batch, embedded))).squeeze(-1)

    def mlp_input(self, batch: Batch, embedded: FeatureEmbeddings) -> Tensor:
        """The top MLP's input of ``variant`` (before ``input_norm``): [B, W]."""
        pooled = embedded.pooled  # [B, F, D]
        query = pooled[:, self.target_index].flatten(1)  # [B, K·D]
        mask = self.behaviour_mask(embedded)
        keys = torch.cat([embedded.sequences[n] for n in self.behaviours], dim=-1)  # [B, L, K·D]
        interest = self.attention(query, keys, mask)
        parts = [pooled.flatten(1)]
        if self.config.variant == "authors":
            history = (keys * mask.unsqueeze(-1).to(keys.dtype)).sum(1)
            parts += [history, query * history, interest]
        else:
            parts.append(interest)
        if self.config.variant == "ctr":
            parts.append(query * interest)
        for name in self.others:
            valid = embedded.masks[name].unsqueeze(-1).to(pooled.dtype)
            parts.append((embedded.sequences[name] * valid).sum(1) / valid.sum(1).clamp(min=1))
        parts.append(batch.dense)
        return torch.cat(parts, dim=1)

    def behaviour_mask(self, embedded: FeatureEmbeddings) -> Tensor:
        """The valid positions [B, L] of the behaviour sequences, refusing a row whose sequences
        hold different numbers of items: position j would pair one's item with another's
        category (the data pipeline drops an empty item, ``a^^b``, from one sequence alone). On
        a GPU, compiled and in an exported program (whose grids are all ``max_len`` wide), the
        check runs on the device without a host sync."""
        first, mask = self.behaviours[0], embedded.masks[self.behaviours[0]]
        counts = mask.sum(1)
        for name in self.behaviours[1:]:
            other = embedded.masks[name].sum(1)
            differ = other != counts
            same_width = embedded.masks[name].shape == mask.shape  # the batch's longest differ: refused on the host
            if same_width and (mask.is_cuda or torch.compiler.is_compiling() or torch.compiler.is_exporting()):
                torch._assert_async(~differ.any(), self._unaligned)
            elif not same_width or bool(differ.any()):
                row = int(differ.nonzero()[0, 0])
                raise DataError(f"model.sequence_fields: DIN reads {self.behaviours} position by position, and a row "
                                f"has {first} of length {int(counts[row])} but {name} of length {int(other[row])}; "
                                f"{UNALIGNED_BEHAVIOURS}")
        return mask

    def _register_counts(self, schema: Schema) -> None:
        """Buffers mapping a row key (table start + id) to its count, table and a feature."""
        tables = list(schema.tables())
        missing = [t for t in tables if t not in schema.counts]
        if missing:
            raise RecipeError(f"model.l2_reg: the schema has no id counts for tables {missing}")
        starts = np.cumsum([0] + [schema.counts[t].shape[0] for t in tables[:-1]])
        feature_table = [tables.index(f.table) for f in schema.sparse_features]
        counts = np.concatenate([schema.counts[t] for t in tables]).astype(np.float32)
        self.register_buffer("counts", torch.from_numpy(counts).clamp(min=1), persistent=False)
        self.register_buffer("starts", torch.tensor(starts, dtype=torch.int64), persistent=False)
        self.register_buffer("feature_start", self.starts[feature_table], persistent=False)
        owners = [feature_table.index(t) for t in range(len(tables))]
        self.register_buffer("table_feature", torch.tensor(owners, dtype=torch.int64), persistent=False)

    def regularizer(self, batch: Batch, embedded: FeatureEmbeddings) -> Tensor:
        """λ/2 · Σ ‖w_j‖² / n_j over the distinct non-padding rows j of this batch."""
        if not self.config.l2_reg or not self.training:
            return super().regularizer(batch, embedded)
        ids, feature = batch.sparse.values, batch.sparse.feature_of_value()
        keep = ids != PAD_ID
        keys = torch.unique(self.feature_start[feature[keep]] + ids[keep])  # distinct rows
        table = torch.searchsorted(self.starts, keys, right=True) - 1
        try:
            if embedded.rows is None:
                raise NotImplementedError
            rows = embedded.rows(self.table_feature[table], keys - self.starts[table])  # [U, D]
        except NotImplementedError:
            raise RecipeError("model.l2_reg: the embedding method gives no per-id vectors to regularize") from None
        return 0.5 * self.config.l2_reg * (rows.pow(2).sum(1) * ranks_share(keys) / self.counts[keys]).sum()


def ranks_share(keys: Tensor) -> Tensor:
    """W / k_j for each of this rank's distinct ``keys`` [U], k_j the ranks whose part of the
    batch holds key j (a collective: every rank calls it; 1 outside a group of several). The
    ranks' gradients are averaged, so row j then gets the whole λ·w_j/n_j of the batch."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return torch.ones(keys.shape, device=keys.device)
    world = dist.get_world_size()
    seen, ranks = torch.unique(gather_padded(keys, world), return_counts=True)  # each rank's keys are distinct
    return world / ranks[torch.searchsorted(seen, keys)].to(torch.float32)


class InferenceBatchNorm(nn.Module):
    """The normalisation of the authors' top MLP: DIEN's ``Model.build_fcn_net`` (mouna99/dien
    ``script/model.py``) calls ``tf.layers.batch_normalization(inputs=inp, name='bn1')``
    without ``training``, so TF normalises by the moving statistics in training too, and
    never updates them (nothing runs the update ops): they stay at their initial mean 0 and
    variance 1. What remains is a learned per-unit scale γ and shift β:

        y = γ ⊙ x / sqrt(1 + ε) + β,   ε = 1e-3 (TF's default), γ = 1, β = 0 at the start

    Shapes: [B, W] → [B, W].
    """

    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x: Tensor) -> Tensor:
        return x * (self.weight / (1.0 + TF_BN_EPSILON) ** 0.5) + self.bias
