"""The embedding-method contract (DESIGN §3): id transform → storage lookup → value transform.

Every method is an ``EmbeddingMethod``: it maps a batch's ``JaggedFeatures`` to
``FeatureEmbeddings`` with the same D for every feature, reports the bytes a deployed model
keeps (``memory_bytes``), and may add loss terms (``regularizer``). The base class does the
bookkeeping all methods share (pooling, mean weights, per-position sequences, padding), so a
method only says how a bag of ids becomes a vector.
"""

from __future__ import annotations

import numbers
from typing import Callable

import torch
from torch import Tensor, nn

from ctr.batch import JaggedFeatures
from ctr.embeddings.bags import Bags, IdGrid
from ctr.embeddings.stages import Stage
from ctr.embeddings.types import EmbeddingLayout, FeatureEmbeddings
from ctr.errors import RecipeError
from ctr.kernels.embedding_bag import FusedOptimizer
from ctr.recipe import EmbeddingConfig
from ctr.schema import FeatureSpec, Schema

FP32_BYTES = 4
ENCODING_HINT = "encode raw values with the run's schema (docs/export.md shows how)"
OUTSIDE_VOCABULARY = f"an id is outside its feature's vocabulary (inputs.json: vocab_size); {ENCODING_HINT}"


class EmbeddingMethod(nn.Module):
    """Base class of every embedding method.

    A method implements ``embed_ids`` (one vector per id) and ``memory_bytes``; it may also
    give fast paths: ``embed_bags`` (pooled bags at once, e.g. through the embedding-bag
    kernel) and ``embed_grid`` (a batch of single ids). The base class hands each batch to
    ``embed_grid`` (every feature a single id pooled by sum) or ``embed_bags`` (otherwise),
    whose defaults end in ``embed_ids``, and assembles the result.

    Args:
        schema: fitted schema (vocabulary sizes, id counts).
        config: the method's config (a subclass of ``EmbeddingConfig``).
    """

    # Whether this copy is one of several trained data-parallel (set by the distributed loop):
    # writes outside the optimizer are then recorded for ``sync_replicas``.
    replicated = False
    # Buffers that ``sync_replicas`` keeps equal on every copy (DDP does not broadcast them).
    synced_buffers: tuple[str, ...] = ()
    # Whether ``use_fused_update`` works: the method stores its rows in a kernel table.
    fusable = False
    # Whether the method updates its rows inside the backward, from the gradient as it comes
    # (no optimizer step between: a loss scale or a second lookup would reach the rows).
    updates_in_backward = False
    # Whether the method sizes its storage from ``embedding.budget`` (the recipe refuses it
    # without one, before any data is read).
    needs_budget = False
    # Whether the method looks its rows up through ``ctr.kernels`` with ``embedding.backend``
    # (the recipe refuses the key for a method that does its own lookups: it would be ignored).
    reads_backend = False

    def __init__(self, schema: Schema, config: EmbeddingConfig):
        super().__init__()
        if type(self).embed_ids is EmbeddingMethod.embed_ids and type(self).embed_bags is EmbeddingMethod.embed_bags:
            raise RecipeError(f"embedding.method: {type(self).__name__} implements neither embed_ids(feature, ids) nor "
                              "embed_bags(bags); a method gives the vector of each id (docs/extending.md)")
        self.schema = schema
        self.config = config
        schema.require_sparse()  # a method of no table (tune and bench build one before training)
        self.layout = EmbeddingLayout.from_schema(schema, config.dim)
        sparse = schema.sparse_features
        self.feature_names = [f.spec.name for f in sparse]
        self.table_rows = schema.tables()
        self.table_names = list(self.table_rows)
        self.register_buffer(
            "feature_table",
            torch.tensor([self.table_names.index(f.table) for f in sparse], dtype=torch.int64),
            persistent=False,
        )
        rows = [self.table_rows[f.table] for f in sparse]
        self.register_buffer("feature_rows", torch.tensor(rows, dtype=torch.int64), persistent=False)
        self._keeps_positions = [f.spec.kind == "sequence" and f.spec.pooling == "none" for f in sparse]
        self._pooled_count = self._keeps_positions.count(False)
        self._mean_pooled = [f.spec.kind == "sequence" and f.spec.pooling == "mean" for f in sparse]
        self._left_padded = [f.spec.padding == "left" for f in sparse]
        self._widths = [f.spec.max_len if f.spec.kind == "sequence" else 1 for f in sparse]
        self._too_long = [_too_long(f.spec) for f in sparse]

    @property
    def dim(self) -> int:
        return self.config.dim

    def forward(self, sparse: JaggedFeatures) -> FeatureEmbeddings:
        """Embeds a batch: pooled [B, F, D] plus per-position sequences [B, L, D]."""
        if list(sparse.keys) != self.feature_names:
            raise ValueError(f"expected sparse keys {self.feature_names}, got {sparse.keys}")
        self._check_ids(sparse)
        if torch.compiler.is_exporting():
            self._check_lengths(sparse)
            return self._padded(sparse) if any(width > 1 for width in self._widths) else self._embedded(sparse)
        embedded = self._embedded(sparse)
        self._check_vectors(embedded.pooled, sparse.batch_size)
        return embedded

    def _embedded(self, sparse: JaggedFeatures) -> FeatureEmbeddings:
        grid = self._grid(sparse)
        if grid is not None:
            return FeatureEmbeddings(pooled=self.embed_grid(grid), sequences={}, masks={}, rows=self.rows_again)
        bags, pooled_slots, sequence_slots = self._regroup(sparse)
        vectors = self._vectors_of_bags(bags)
        return self._assemble(sparse, vectors, pooled_slots, sequence_slots)

    def _check_vectors(self, pooled: Tensor, rows: int) -> None:
        """Refuses a method's vectors other than float (float32 or narrower) [B, F, D], F the
        pooled features, D = ``embedding.dim`` (a plugin's narrower rows or [N] vectors were
        read as other shapes)."""
        want = (rows, self._pooled_count, self.dim)
        if tuple(pooled.shape) == want and pooled.is_floating_point() and pooled.dtype != torch.float64:
            return
        raise RecipeError(f"embedding.method: {type(self).__name__} embedded the batch as {pooled.dtype} "
                          f"{list(pooled.shape)}; a method gives float32 (or narrower) vectors {list(want)} ([B, F, D], "
                          "D = embedding.dim)")

    def _check_ids(self, sparse: JaggedFeatures) -> None:
        """Refuses an id outside its feature's vocabulary, [0, rows of its table): methods
        would read another table's row (``full``) or hash it silently. The data pipeline never
        makes one; ids given through the Python API or to an exported program may. On a GPU,
        and in a traced program, the check runs on the device without a host sync."""
        values = sparse.values
        if sparse.single and sparse.keys and sparse.batch_size:  # one id a bag: each feature's least and
            grid = values.view(len(sparse.keys), sparse.batch_size)
            outside = (grid.amax(1) >= self.feature_rows) | (grid.amin(1) < 0)  # largest id [F] (one pass each)
        else:
            outside = (values < 0) | (values >= self.feature_rows[sparse.feature_of_value()])
        if values.is_cuda or torch.compiler.is_compiling():
            torch._assert_async(~outside.any(), OUTSIDE_VOCABULARY)
            return
        if bool(outside.any()):
            self._refuse_outside(sparse)

    def _refuse_outside(self, sparse: JaggedFeatures) -> None:
        """The ValueError naming the first id outside its feature's vocabulary (one there is)."""
        values = sparse.values
        outside = (values < 0) | (values >= self.feature_rows[sparse.feature_of_value()])
        at = int(outside.nonzero()[0, 0])
        f = int(sparse.feature_of_value()[at])
        raise ValueError(
            f"feature {self.feature_names[f]!r}: id {int(values[at])} is outside its vocabulary of "
            f"{int(self.feature_rows[f])} ids (0 is padding, 1 the OOV id); {ENCODING_HINT}"
        )

    def _check_lengths(self, sparse: JaggedFeatures) -> None:
        """Refuses, in a traced program, a bag of more ids than ctr's encoder puts in one: a
        categorical's one id, a sequence's last ``max_len``. The fixed-width grids of
        ``_padded`` would keep a longer bag's first ids, and a pooled categorical would sum
        them all. One device-side assertion a feature, naming it."""
        lengths = sparse.lengths().view(len(self.feature_names), sparse.batch_size)  # [F, B]
        for f in range(len(self.feature_names)):
            torch._assert_async((lengths[f] <= self._widths[f]).all(), self._too_long[f])

    def embed_grid(self, grid: IdGrid) -> Tensor:
        """The vectors [B, F, D] of a grid of single ids. Default: ``embed_ids`` of every id,
        or, for a method that overrides only ``embed_bags``, its bags of one id each."""
        b, f = grid.ids.shape
        if type(self).embed_bags is EmbeddingMethod.embed_bags:
            flat = self._vectors_of_ids(grid.features.expand(b, f).reshape(-1), grid.ids.reshape(-1))
            return flat.view(b, f, -1)
        vectors = self._vectors_of_bags(grid.as_bags())
        return (vectors if vectors.dim() == 3 else vectors.view(f, b, -1)).transpose(0, 1)

    def embed_bags(self, bags: Bags) -> Tensor:
        """Pools each bag into one vector [num_bags, D] (or [F, n, D] when
        ``bags.equal_groups()`` is F); default: weighted sum of ``embed_ids``."""
        rows = self._vectors_of_ids(bags.feature, bags.ids)
        if bags.weights is not None:
            rows = rows * bags.weights.unsqueeze(1).to(rows.dtype)
        lengths = bags.offsets[1:] - bags.offsets[:-1]
        bag_of_id = torch.repeat_interleave(torch.arange(lengths.numel(), device=rows.device), lengths,
                                            output_size=rows.shape[0])  # known: no unbacked size in an export
        out = rows.new_zeros(lengths.numel(), rows.shape[1])
        return out.index_add_(0, bag_of_id, rows)

    def _vectors_of_bags(self, bags: Bags) -> Tensor:
        """``embed_bags``, refusing a result other than one vector a bag: [num_bags, D], or
        [F, B, D] of ``bags.equal_groups()`` F (a plugin's extra bags were read as others, too
        few ended in an IndexError); dtype and D are checked on the batch's vectors."""
        vectors, count = self.embed_bags(bags), bags.offsets.numel() - 1
        grouped = (bags.equal_groups(), bags.samples) if bags.samples else None
        if torch.compiler.is_compiling() or isinstance(vectors, Tensor) and (
                vectors.dim() == 2 and vectors.shape[0] == count or vectors.dim() == 3 and vectors.shape[:2] == grouped):
            return vectors
        got = f"{vectors.dtype} {list(vectors.shape)}" if isinstance(vectors, Tensor) else f"a {type(vectors).__name__}"
        raise RecipeError(f"embedding.method: {type(self).__name__}.embed_bags() returned {got} for {count} bags; a "
                          "method gives one vector a bag ([num_bags, D], or [F, B, D] when bags.equal_groups() is F)")

    def _vectors_of_ids(self, feature: Tensor, ids: Tensor) -> Tensor:
        """``embed_ids``, refusing a result other than one vector an id (a plugin's [N - 1, D]
        ended in a traceback about tensor sizes); dtype and D are checked on the batch's vectors."""
        rows = self.embed_ids(feature, ids)
        if torch.compiler.is_compiling() or (isinstance(rows, Tensor) and rows.shape[:1] == ids.shape):
            return rows
        got = f"{rows.dtype} {list(rows.shape)}" if isinstance(rows, Tensor) else type(rows).__name__
        raise RecipeError(f"embedding.method: {type(self).__name__}.embed_ids() returned {got} for {ids.numel()} ids; "
                          "a method gives one vector an id ([N, D])")

    def embed_ids(self, feature: Tensor, ids: Tensor) -> Tensor:
        """One vector [N, D] per id ``ids[i]`` of feature ``feature[i]`` (both int64 [N])."""
        raise NotImplementedError(f"{type(self).__name__} implements neither embed_bags nor embed_ids")

    def rows_again(self, feature: Tensor, ids: Tensor) -> Tensor:
        """``embed_ids`` for a second lookup of a step's rows (``FeatureEmbeddings.rows``, DIN's
        ``l2_reg``): BatchNorm layers normalise with this lookup's statistics but keep their
        running ones, which evaluation reads and which the step's forward alone updates."""
        norms = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        kept = [{name: buffer.clone() for name, buffer in m.named_buffers(recurse=False)} for m in norms]
        try:
            return self.embed_ids(feature, ids)
        finally:
            with torch.no_grad():
                for norm, buffers in zip(norms, kept):
                    for name, value in buffers.items():
                        getattr(norm, name).copy_(value)

    def memory_bytes(self) -> int:
        """Bytes a deployed model keeps for embeddings (parameters, codebooks, seeds, scales).

        Default: every tensor of the method's ``state_dict`` (parameters and persistent
        buffers), which is what a checkpoint of the method stores. Buffers derived from the
        schema or from other stored tensors are registered non-persistent and not counted.
        """
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    def full_bytes(self) -> int:
        """Bytes of the uncompressed baseline: every table at full rows × D in fp32."""
        return sum(self.table_rows.values()) * self.dim * FP32_BYTES

    def stored_bytes(self) -> int:
        """``memory_bytes()``, checked: a positive int (a plugin's tensor, float or negative
        count reached ``metrics.json`` and the compression benchmark's budget check)."""
        stored = self.memory_bytes()
        if isinstance(stored, numbers.Integral) and not isinstance(stored, bool) and stored > 0:
            return int(stored)
        raise RecipeError(f"embedding.method: {type(self).__name__}.memory_bytes() returned {stored!r}; a method "
                          "returns the bytes its deployed embeddings keep, an int > 0")

    def regularizer(self) -> Tensor:
        """Extra loss terms of the method (zero by default)."""
        return torch.zeros((), device=self._device())

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Parameters with sparse gradients; the embedding optimizer updates them row-wise."""
        return []

    def sync_replicas(self) -> None:
        """Makes every data-parallel copy apply what training wrote outside the optimizer on
        any copy (rows updated in the backward, codes chosen in a lookup), so the copies stay
        equal. Called by the distributed loop on every rank after each backward, before the
        optimizer step (a collective: every rank calls it); nothing by default."""

    def stages(self) -> list[Stage]:
        """The stages of a multi-stage method, in order; empty for single-stage methods."""
        return []

    def use_fused_update(self, optimizer: FusedOptimizer) -> None:
        """Applies ``optimizer`` to the method's tables inside the lookup's backward.

        Methods whose storage is a kernel table (``TableMethod``) support it; others raise.
        """
        raise RecipeError(
            f"train.embedding_optimizer.fused: embedding method {self.config.method} has no kernel table"
            " to update fused; set fused: false"
        )

    def follow_fused_lr(self, lr: Callable[[], float]) -> None:
        """Reads the fused update's learning rate from ``lr`` at every training lookup (a
        schedule's current lr); only after ``use_fused_update``."""
        raise RecipeError(f"embedding method {self.config.method} has no fused update whose lr to schedule")

    def _device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        return self.feature_table.device

    def _regroup(self, sparse: JaggedFeatures) -> tuple[Bags, list[tuple[int, int]], list[tuple[int, int, int]]]:
        """Splits per-position sequences into one bag per id and adds mean weights.

        Returns the bags plus, for the assembly, each pooled feature's (feature, first bag) and
        each sequence feature's (feature, first bag, first id).
        """
        b = sparse.batch_size
        if self._plain_sums(sparse):
            slots = [(f, f * b) for f in range(len(self.feature_names))]
            starts = [f * b for f in range(len(self.feature_names) + 1)]
            return Bags(sparse.feature_of_value(), sparse.values, sparse.offsets, None, starts, samples=b), slots, []
        lengths = sparse.lengths()
        offsets = sparse.offsets
        pieces, weight_pieces, pooled, sequences, bag_starts = [], [], [], [], []
        need_weights = sparse.weights is not None or any(self._mean_pooled)
        bag_count, feature_of_value = 0, sparse.feature_of_value()
        for f in range(len(self.feature_names)):
            bag_starts.append(bag_count)
            start, end = int(offsets[f * b]), int(offsets[(f + 1) * b])
            if self._keeps_positions[f]:
                sequences.append((f, bag_count, start))
                pieces.append(torch.ones(end - start, dtype=torch.int64, device=offsets.device))
                bag_count += end - start
            else:
                pooled.append((f, bag_count))
                pieces.append(lengths[f * b : (f + 1) * b])
                bag_count += b
            if need_weights:
                weight_pieces.append(self._id_weights(lengths[f * b : (f + 1) * b], f, end - start))
        bag_offsets = torch.zeros(bag_count + 1, dtype=torch.int64, device=offsets.device)
        torch.cumsum(torch.cat(pieces), 0, out=bag_offsets[1:])
        weights = None
        if need_weights:
            weights = torch.cat(weight_pieces)
            if sparse.weights is not None:
                weights = weights * sparse.weights
        bag_starts.append(bag_count)
        samples = b if pooled and not sequences else 0
        return Bags(feature_of_value, sparse.values, bag_offsets, weights, bag_starts, samples), pooled, sequences

    def _plain_sums(self, sparse: JaggedFeatures) -> bool:
        """Every feature pooled by sum without weights: the batch's bags are the bags to embed."""
        return bool(sparse.keys) and sparse.weights is None and not any(self._keeps_positions) and not any(
            self._mean_pooled
        )

    def _grid(self, sparse: JaggedFeatures) -> IdGrid | None:
        """The batch as a grid of single ids [B, F] (a view of its values), if it is one."""
        b, num = sparse.batch_size, len(self.feature_names)
        if not (b and self._plain_sums(sparse) and (sparse.single or self._single_ids(sparse))):
            return None
        return IdGrid(sparse.values.view(num, b).t(), torch.arange(num, device=sparse.values.device))

    @staticmethod
    def _single_ids(sparse: JaggedFeatures) -> bool:
        """Whether every bag of an unflagged batch holds exactly one id (a pass over the lengths);
        never while ``torch.export`` traces (a branch on data: the bags path serves every batch)."""
        if torch.compiler.is_exporting():
            return False
        return sparse.values.numel() == sparse.offsets.numel() - 1 and bool((sparse.lengths() == 1).all())

    def _id_weights(self, lengths: Tensor, f: int, count: int) -> Tensor:
        if not self._mean_pooled[f]:
            return torch.ones(count, device=lengths.device)
        inverse = 1.0 / lengths.clamp(min=1).to(torch.float32)
        return torch.repeat_interleave(inverse, lengths, output_size=count)

    @staticmethod
    def _pooled(vectors: Tensor, pooled_slots: list[tuple[int, int]], b: int) -> Tensor:
        """The pooled features' bags as [B, F, D], gathered in one op (one backward scatter,
        not one full-size zero gradient per feature as F slices would cost)."""
        num, dim = len(pooled_slots), vectors.shape[-1]
        if torch.compiler.is_exporting():
            return EmbeddingMethod._pooled_batch_major(vectors, pooled_slots, b)
        if vectors.dim() == 3:  # grouped by the method: [F, B, D]
            return vectors.transpose(0, 1)
        if num * b == vectors.shape[0]:  # only pooled features: bags are already [F, B] in order
            return vectors.view(num, b, dim).transpose(0, 1)
        starts = torch.tensor([first for _, first in pooled_slots], dtype=torch.int64, device=vectors.device)
        index = (starts.unsqueeze(1) + torch.arange(b, device=vectors.device)).reshape(-1)
        return vectors.index_select(0, index).view(num, b, dim).transpose(0, 1)

    def _padded(self, sparse: JaggedFeatures) -> FeatureEmbeddings:
        """The batch embedded as fixed-width grids, for ``torch.export``: each feature's bags as
        ids [B, W] (W = ``max_len`` for a sequence, 1 otherwise) with a mask, looked up by
        ``embed_ids``; no shape depends on the ids. Sequences that keep positions are [B, W, D]
        (the masked tail is zeros, as in a batch whose longest sequence is W long)."""
        b, count, num = sparse.batch_size, sparse.values.numel(), len(self.feature_names)
        first, last = sparse.offsets[:-1].view(num, b), sparse.offsets[1:].view(num, b)  # views: shapes export follows
        values = torch.cat([sparse.values, sparse.values.new_zeros(1)])  # padding past the end: bags may all be empty
        pooled, sequences, masks = [], {}, {}
        for f, name in enumerate(self.feature_names):
            width, starts = self._widths[f], first[f]
            lengths = last[f] - starts
            slots = torch.arange(width, device=starts.device).unsqueeze(0)
            shift = (width - lengths).unsqueeze(1) if self._left_padded[f] else torch.zeros_like(starts).unsqueeze(1)
            mask = (slots >= shift) & (slots < shift + lengths.unsqueeze(1))
            index = (starts.unsqueeze(1) + slots - shift).clamp(0, count)
            index = index.masked_fill(~mask, count)  # a masked slot reads the padding id, not a bag beside its own
            feature = torch.full((b * width,), f, dtype=torch.int64, device=starts.device)
            vectors = self.embed_ids(feature, values[index].reshape(-1)).view(b, width, -1)
            vectors = vectors * mask.unsqueeze(-1).to(vectors.dtype)
            if self._keeps_positions[f]:
                sequences[name], masks[name] = vectors, mask
            elif self._mean_pooled[f]:
                pooled.append(vectors.sum(1) / lengths.clamp(min=1).unsqueeze(1).to(vectors.dtype))
            else:
                pooled.append(vectors.sum(1))
        return FeatureEmbeddings(pooled=torch.stack(pooled, 1), sequences=sequences, masks=masks, rows=self.rows_again)

    @staticmethod
    def _pooled_batch_major(vectors: Tensor, pooled_slots: list[tuple[int, int]], b: int) -> Tensor:
        """``_pooled``'s [B, F, D] gathered row by row, for ``torch.export``: a transposed
        [F, B, D] made contiguous would fix the batch size (a guard that B is not 1)."""
        if vectors.dim() == 3:  # grouped by the method: [F, B, D]
            starts = [f * b for f in range(vectors.shape[0])]
            vectors = vectors.reshape(-1, vectors.shape[-1])
        else:
            starts = [first for _, first in pooled_slots]
        first = torch.tensor(starts, dtype=torch.int64, device=vectors.device)
        index = (torch.arange(b, device=vectors.device).unsqueeze(1) + first.unsqueeze(0)).reshape(-1)
        return vectors.index_select(0, index).view(b, len(starts), vectors.shape[-1])

    def _assemble(
        self,
        sparse: JaggedFeatures,
        vectors: Tensor,
        pooled_slots: list[tuple[int, int]],
        sequence_slots: list[tuple[int, int, int]],
    ) -> FeatureEmbeddings:
        b, lengths = sparse.batch_size, sparse.lengths()
        pooled = self._pooled(vectors, pooled_slots, b)
        sequences, masks = {}, {}
        for f, first_bag, first_id in sequence_slots:
            name = self.feature_names[f]
            seq_lengths = lengths[f * b : (f + 1) * b]
            count = int(seq_lengths.sum())
            width = max(int(seq_lengths.max()) if b else 1, 1)
            sample = torch.repeat_interleave(torch.arange(b, device=vectors.device), seq_lengths, output_size=count)
            starts = sparse.offsets[f * b : (f + 1) * b] - first_id
            first_slot = starts - (width - seq_lengths) if self._left_padded[f] else starts
            position = torch.arange(count, device=vectors.device) - torch.repeat_interleave(first_slot, seq_lengths, output_size=count)
            padded = vectors.new_zeros(b, width, vectors.shape[1])
            padded[sample, position] = vectors[first_bag : first_bag + count]
            sequences[name] = padded
            slots = torch.arange(width, device=vectors.device).unsqueeze(0)
            if self._left_padded[f]:
                masks[name] = slots >= (width - seq_lengths).unsqueeze(1)
            else:
                masks[name] = slots < seq_lengths.unsqueeze(1)
        return FeatureEmbeddings(pooled=pooled, sequences=sequences, masks=masks, rows=self.rows_again)


def _too_long(spec: FeatureSpec) -> str:
    """What a traced program says of a bag of ``spec``'s feature holding more ids than its
    encoding gives (``EmbeddingMethod._check_lengths``)."""
    if spec.kind == "sequence":
        return (f"feature {spec.name!r}: a bag holds more than its max_len {spec.max_len} ids (a sequence keeps its "
                f"last max_len items; inputs.json: max_len); {ENCODING_HINT}")
    return f"feature {spec.name!r}: a bag holds more than one id (a categorical is one id a row); {ENCODING_HINT}"


class BatchLosses:
    """Mixin of a method whose lookups add loss terms (``add_loss``): a forward starts an
    empty list, ``regularizer`` returns their sum once (zero when there are none)."""

    _losses: list[Tensor]

    def forward(self, sparse: JaggedFeatures) -> FeatureEmbeddings:
        self._losses = []
        return super().forward(sparse)  # type: ignore[misc]

    def add_loss(self, loss: Tensor) -> None:
        self._losses = [*getattr(self, "_losses", []), loss]

    def regularizer(self) -> Tensor:
        losses = getattr(self, "_losses", [])
        if not losses:
            return super().regularizer()  # type: ignore[misc]
        self._losses = []
        return torch.stack(losses).sum()
