"""Feature specs (what the recipe declares) and the fitted schema (what preprocessing found).

Reserved ids in every vocabulary: 0 = padding, 1 = out-of-vocabulary; with ``oov_buckets``
> 1, ids 1..oov_buckets are OOV hash buckets and known tokens start after them.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from ctr.atomic import atomic_path, atomic_write
from ctr.errors import RecipeError, UserError, reason, refuse_for_training
from ctr.typed import parse, to_plain

PAD_ID = 0
OOV_ID = 1
LABEL_COLUMN = "__label__"  # the label's and the group's columns in encoded shards
GROUP_COLUMN = "__group__"
RESERVED_NAMES = (LABEL_COLUMN, GROUP_COLUMN)
ID_MAX = 2**31 - 1  # encoded ids are int32
QUANTILES_MAX = 2**24  # a float32 in [0, 1] tells no more quantiles apart
FLOAT32_MAX = float(np.finfo(np.float32).max)  # encoded numerics are float32
FLOAT32_RANGE = f"the float32 range (±{FLOAT32_MAX:.4g}) of the encoded data"

Kind = Literal["categorical", "numeric", "sequence"]
_TRANSFORMS = {
    "numeric": ("none", "log1p", "log_square", "standardize", "quantile"),
    "categorical": ("none", "log_square"),
    "sequence": ("none",),
}
Pooling = Literal["sum", "mean", "none"]


@dataclass
class FeatureSpec:
    """One input feature.

    Args:
        name: feature name (unique).
        kind: ``categorical`` (one id), ``numeric`` (one float), ``sequence`` (a list of ids).
        source: raw column it is read from (defaults to ``name``).
        min_count: tokens seen fewer times in training data map to OOV.
        max_vocab: keep at most this many most frequent tokens.
        oov_buckets: number of OOV ids (tokens hashed into them); 1 = a single OOV id.
        share_with: use this other feature's vocabulary and embedding table.
        max_len: sequences keep their last ``max_len`` items.
        splitter: separator of sequence items in a text column.
        pooling: for sequences, ``sum``/``mean`` pool the bag, ``none`` keeps positions
            (for attention models such as DIN); categoricals are always pooled.
        padding: for sequences that keep positions, where the padding of a shorter
            sequence goes in [B, L, D]: ``right`` (items first) or ``left`` (items last, so
            the most recent item is always at position L - 1).
        transform: for numeric features: ``none``, ``log1p`` (log(1 + max(x, 0)), as DLRM),
            ``log_square`` (floor(ln(x)^2) for x > 2, else round(x), the Criteo winners' convention),
            ``standardize`` ((x - mean) / std of the training data), ``quantile`` (the
            training data's empirical CDF at ``num_buckets`` quantiles, in [0, 1]). For a
            categorical feature read from a numeric column, ``log_square`` turns the numbers
            into bucket tokens.
        fill: value of a missing numeric (after the transform), inside the float32 range.
        num_buckets: quantiles of the ``quantile`` transform.
        num_ids: for a categorical feature whose column already holds integer ids in
            ``[0, num_ids)`` (pre-hashed or pre-indexed data, as DLRM's Criteo Terabyte
            preprocessing writes): no vocabulary is counted, id ``k`` is row ``k`` after the
            reserved ids, so the table has a row for every id seen or not; a missing value
            is padding and any other value is OOV. ``min_count`` and ``max_vocab`` then do
            not apply.
    """

    name: str
    kind: Kind = "categorical"
    source: str | None = None
    min_count: int = 1
    max_vocab: int | None = None
    oov_buckets: int = 1
    share_with: str | None = None
    max_len: int = 50
    splitter: str = "^"
    pooling: Pooling = "mean"
    padding: Literal["right", "left"] = "right"
    transform: Literal["none", "log1p", "log_square", "standardize", "quantile"] = "none"
    fill: float = 0.0
    num_buckets: int = 20
    num_ids: int | None = None

    def __post_init__(self) -> None:
        if self.name in RESERVED_NAMES:
            raise ValueError(f"feature {self.name!r}: the name is reserved for the encoded data's own column; rename it")
        if not self.splitter:
            raise ValueError(f"feature {self.name!r}: splitter must not be empty")
        if self.num_ids is not None and (self.kind != "categorical" or self.num_ids < 1 or self.transform != "none"):
            raise ValueError(f"feature {self.name!r}: num_ids needs a categorical feature without a transform and >= 1")
        if self.min_count < 1 or self.oov_buckets < 1 or self.max_len < 1:
            raise ValueError(f"feature {self.name!r}: min_count, oov_buckets and max_len must be >= 1")
        if self.max_vocab is not None and self.max_vocab < 1:  # 0 kept no token: every value OOV
            refuse_for_training(f"feature {self.name!r}: max_vocab must be >= 1 or null (no limit), got "
                                f"{self.max_vocab}")
        if self.kind == "categorical" and self.pooling == "none":
            raise ValueError(f"feature {self.name!r}: a categorical feature cannot keep positions")
        if self.kind != "sequence" and self.padding != "right":
            raise ValueError(f"feature {self.name!r}: padding applies to sequence features only")
        allowed = _TRANSFORMS[self.kind]
        if self.transform not in allowed:
            raise ValueError(f"feature {self.name!r}: transform {self.transform!r} needs one of {allowed}")
        if self.transform == "quantile" and not 1 <= self.num_buckets <= QUANTILES_MAX:
            raise ValueError(f"feature {self.name!r}: num_buckets must be in [1, {QUANTILES_MAX}] (a float32 quantile "
                             f"tells no more apart), got {self.num_buckets}")
        if abs(self.fill) > FLOAT32_MAX:  # the encoded column would hold it as inf
            raise ValueError(f"feature {self.name!r}: fill {self.fill:g} is past {FLOAT32_RANGE}")
        self._check_id_range()

    def _check_id_range(self) -> None:
        """Refuses OOV buckets and integer ids whose rows pass int32, the encoded ids' type
        (numpy's overflow or a table-sized allocation once the data was read)."""
        if self.oov_buckets + (self.num_ids or 0) <= ID_MAX:
            return
        given = [f"num_ids {self.num_ids}"] if self.num_ids else []
        if self.oov_buckets > 1 or not given:
            given.append(f"oov_buckets {self.oov_buckets}")
        verb = "give" if len(given) > 1 else "gives"
        raise ValueError(f"feature {self.name!r}: {' and '.join(given)} {verb} ids past int32's {ID_MAX}")

    @property
    def column(self) -> str:
        return self.source or self.name

    @property
    def is_sparse(self) -> bool:
        return self.kind != "numeric"


@dataclass
class NumericStats:
    """Fitted statistics of a numeric feature (after its transform)."""

    mean: float = 0.0
    std: float = 1.0
    boundaries: list[float] = field(default_factory=list)


@dataclass
class FeatureInfo:
    """A spec plus what was fitted for it."""

    spec: FeatureSpec
    vocab_size: int = 0
    table: str = ""
    numeric: NumericStats | None = None


@dataclass
class Schema:
    """The fitted description of a dataset: features, vocabularies, label and group.

    ``counts[table]`` holds per-id training frequencies [vocab_size] (frequency-aware
    embedding methods need them); it is saved as ``counts.npz`` beside ``schema.json``.
    """

    features: list[FeatureInfo]
    label: str
    group: str | None = None
    counts: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def feature(self, name: str) -> FeatureInfo:
        for info in self.features:
            if info.spec.name == name:
                return info
        raise KeyError(f"no feature named {name!r}")

    def require_sparse(self) -> None:
        """Refuses a schema without a categorical or sequence feature: every model embeds ids."""
        if not self.sparse_features:
            raise RecipeError("data.features: every feature is numeric; the models embed ids, so give at least one "
                              "categorical or sequence feature")

    @property
    def sparse_features(self) -> list[FeatureInfo]:
        """Categorical and sequence features, in the order of ``JaggedFeatures.keys``."""
        return [f for f in self.features if f.spec.is_sparse]

    @property
    def dense_features(self) -> list[FeatureInfo]:
        """Numeric features, in the column order of ``Batch.dense``."""
        return [f for f in self.features if not f.spec.is_sparse]

    @property
    def pooled_features(self) -> list[FeatureInfo]:
        """Sparse features embedded as one vector per sample."""
        return [f for f in self.sparse_features if f.spec.pooling != "none" or f.spec.kind == "categorical"]

    @property
    def sequence_features(self) -> list[FeatureInfo]:
        """Sequence features that keep their positions ([B, L, D])."""
        return [f for f in self.sparse_features if f.spec.kind == "sequence" and f.spec.pooling == "none"]

    def tables(self) -> dict[str, int]:
        """Embedding table name → rows, one table per vocabulary (shared features share one)."""
        sizes: dict[str, int] = {}
        for info in self.sparse_features:
            sizes[info.table] = max(sizes.get(info.table, 0), info.vocab_size)
        return sizes

    def save(self, folder: str | Path) -> None:
        """Writes schema.json and counts.npz into ``folder`` (each atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = {"label": self.label, "group": self.group, "features": to_plain(self.features)}
        atomic_write(folder / "schema.json", json.dumps(data, indent=1))
        with atomic_path(folder / "counts.npz") as tmp, tmp.open("wb") as out:
            np.savez_compressed(out, **self.counts)  # a large vocabulary's counts are mostly zeros

    @classmethod
    def load(cls, folder: str | Path) -> Schema:
        """The schema ``save`` wrote into ``folder``; a UserError naming a file of it that is
        not whole (cut short, or not what ``save`` writes)."""
        folder = Path(folder)
        with _saved_file(folder / "schema.json"):
            data = json.loads((folder / "schema.json").read_text())
            features = [parse(FeatureInfo, f, f"schema.features[{i}]") for i, f in enumerate(data["features"])]
            label, group = data["label"], data["group"]
        with _saved_file(folder / "counts.npz"), np.load(folder / "counts.npz") as counts:
            table_counts = {k: counts[k] for k in counts.files}
        return cls(features=features, label=label, group=group, counts=table_counts)


@contextmanager
def _saved_file(path: Path) -> Iterator[None]:
    """Inside, an error of reading a damaged ``path`` (not JSON, not a mapping, a key or an
    array missing, a cut zip) is a UserError naming it."""
    try:
        yield
    except (ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zlib.error, RecipeError) as err:
        raise UserError(f"{path}: not a readable saved schema file ({reason(err, typed=True)})") from None
