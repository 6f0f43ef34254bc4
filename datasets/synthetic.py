"""``synthetic``: Criteo-schema rows whose labels come from a planted model.

Rows have 13 numeric columns ``I1..I13`` (log-normal counts with missing values) and 26
categorical columns ``C1..C26`` with heavy-tailed (Zipf) id frequencies. The label of a row
is drawn from ``sigmoid(bias + first-order + pairwise + numeric)``, where the pairwise term
sums dot products of latent vectors of the row's ids over a few column pairs (a sparse
factorization machine): a model that learns feature interactions (DLRM, DeepFM) can beat
logistic regression by a clear margin. Everything is
deterministic by ``data.seed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Iterator

import numpy as np
import pyarrow as pa

from ctr.datasets.criteo import criteo_features
from ctr.datasets.source import DatasetSource, RowStream
from ctr.errors import UserError
from ctr.host import memory_bytes
from ctr.recipe import DataConfig
from ctr.registry import DATASETS
from ctr.schema import ID_MAX, FeatureSpec

NUM_NUMERIC = 13
NUM_CATEGORICAL = 26
CRITEO_LIKE_VOCABS = [
    1_460, 583, 100_000, 50_000, 305, 24, 12_517, 633, 3, 93_145, 5_683, 80_000, 3_194,
    27, 14_992, 60_000, 10, 5_652, 2_173, 4, 70_000, 18, 15, 28_000, 105, 14_000,
]
# The 26 vocabulary sizes of the Criteo Kaggle display-ads data (33,762,577 ids in all), as
# DLRM's and TorchRec's Criteo benchmarks count them.
CRITEO_VOCABS = [
    1_460, 583, 10_131_227, 2_202_608, 305, 24, 12_517, 633, 3, 93_145, 5_683, 8_351_593, 3_194,
    27, 14_992, 5_461_306, 10, 5_652, 2_173, 4, 7_046_547, 18, 15, 286_181, 105, 142_572,
]


@dataclass
class SyntheticConfig(DataConfig):
    """Options of the synthetic dataset.

    Args:
        rows: number of rows generated.
        vocab_sizes: ids per categorical column (26 values); default: Criteo-like sizes.
        vocab_scale: multiplies every vocabulary size (e.g. 0.1 for a small quick run).
        zipf: exponent of the id-frequency law p(rank k) ∝ (k + 1)^-zipf.
        latent_dim: size of the planted latent vectors of the pairwise term.
        interacting_pairs: number of column pairs (drawn by seed) whose ids interact.
        linear_scale, pairwise_scale, numeric_scale: standard deviations of the three
            logit terms.
        positive_rate: approximate share of positive labels (sets the bias).
        missing_rate: share of missing numeric values.
        seed: seed of the planted model and of the rows.
        chunk_rows: rows per generated record batch.
        integer_ids: declare C1..C26 with ``num_ids`` = their vocabulary sizes (no vocabulary
            is counted; every id of the generator owns a table row, seen or not): tables of
            exactly ``vocab_sizes`` rows (plus 2 reserved), as on Criteo-scale benchmarks.
    """

    rows: int = 200_000
    vocab_sizes: list[int] = field(default_factory=lambda: list(CRITEO_LIKE_VOCABS))
    vocab_scale: float = 1.0
    zipf: float = 1.1
    latent_dim: int = 4
    interacting_pairs: int = 12
    linear_scale: float = 0.8
    pairwise_scale: float = 1.6
    numeric_scale: float = 0.4
    positive_rate: float = 0.25
    missing_rate: float = 0.1
    seed: int = 2024
    chunk_rows: int = 65_536
    integer_ids: bool = False
    encoding_keys: ClassVar[tuple[str, ...]] = (*DataConfig.encoding_keys, "integer_ids")
    default_feature_keys: ClassVar[tuple[str, ...]] = ("integer_ids",)
    per_feature: ClassVar[dict[str, str]] = {"integer_ids": "num_ids on C1..C26"}

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.vocab_sizes) != NUM_CATEGORICAL:
            raise ValueError(f"vocab_sizes needs {NUM_CATEGORICAL} values, got {len(self.vocab_sizes)}")
        positive = {"rows": self.rows, "chunk_rows": self.chunk_rows, "vocab_scale": self.vocab_scale,
                    "zipf": self.zipf, "latent_dim": self.latent_dim}
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        for name, value in {"seed": self.seed, "interacting_pairs": self.interacting_pairs}.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not 0 < self.positive_rate < 1:
            raise ValueError(f"positive_rate must be in (0, 1), got {self.positive_rate}")
        if not 0 <= self.missing_rate <= 1:
            raise ValueError(f"missing_rate must be in [0, 1], got {self.missing_rate}")
        for name in ("linear_scale", "pairwise_scale", "numeric_scale"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        self._check_integer_ids()

    def _check_integer_ids(self) -> None:
        """With ``integer_ids`` a column's scaled vocabulary is its feature's num_ids: refused
        where its ids (after the OOV id) pass int32, naming the key at fault."""
        widest = max(range(NUM_CATEGORICAL), key=lambda j: self.vocab_sizes[j])
        ids = self.vocab_sizes[widest] * self.vocab_scale
        if not self.integer_ids or ids < ID_MAX - 0.5:  # scaled_vocabs() rounds
            return
        past = f"past the {ID_MAX - 1} ids of int32 with integer_ids (one id is OOV's)"
        if self.vocab_scale == 1:
            raise ValueError(f"vocab_sizes: column C{widest + 1}'s {ids:.3g} ids are {past}")
        raise ValueError(f"vocab_scale: {self.vocab_scale:g} gives column C{widest + 1} {ids:.3g} ids, {past}")

    def scaled_vocabs(self) -> list[int]:
        return [max(2, int(round(v * self.vocab_scale))) for v in self.vocab_sizes]


class PlantedModel:
    """The hidden parameters that turn a row into a click probability."""

    def __init__(self, config: SyntheticConfig):
        _check_fits_in_memory(config)
        rng = np.random.default_rng([config.seed, 0])
        self.config = config
        self.vocabs = config.scaled_vocabs()
        self.cdfs = [self._zipf_cdf(v, config.zipf) for v in self.vocabs]
        self.first_order = [rng.standard_normal(v).astype(np.float32) for v in self.vocabs]
        self.latent = [self._centered_latent(rng, cdf) for cdf in self.cdfs]
        all_pairs = [(i, j) for i in range(NUM_CATEGORICAL) for j in range(i + 1, NUM_CATEGORICAL)]
        chosen = rng.choice(len(all_pairs), size=min(config.interacting_pairs, len(all_pairs)), replace=False)
        self.pairs = [all_pairs[k] for k in sorted(chosen)]
        self.numeric_weight = rng.standard_normal(NUM_NUMERIC).astype(np.float32)
        self.numeric_mu = rng.uniform(0.0, 3.0, NUM_NUMERIC)
        self.bias = self._calibrated_bias(np.random.default_rng([config.seed, 2]))

    def _centered_latent(self, rng: np.random.Generator, cdf: np.ndarray) -> np.ndarray:
        """Latent vectors [V, k] with zero mean under the column's id distribution.

        Centering makes E[<u_i, u_j> | id_i] = 0: no part of the pairwise term can be
        explained by one id alone, so a first-order model cannot absorb it.
        """
        latent = rng.standard_normal((cdf.shape[0], self.config.latent_dim))
        probs = np.diff(cdf, prepend=0.0)
        return (latent - probs @ latent).astype(np.float32)

    @staticmethod
    def _zipf_cdf(vocab: int, exponent: float) -> np.ndarray:
        weights = (np.arange(vocab, dtype=np.float64) + 1.0) ** -exponent
        cdf = np.cumsum(weights)
        return cdf / cdf[-1]

    def _calibrated_bias(self, rng: np.random.Generator, n: int = 20_000) -> float:
        """The bias whose mean click probability on a sample is ``positive_rate``."""
        ids, counts = self.features(rng, n)
        terms = sum(self.logit_terms(ids, counts).values())
        low, high = -20.0, 20.0
        for _ in range(60):
            mid = (low + high) / 2
            if (1.0 / (1.0 + np.exp(-(mid + terms)))).mean() < self.config.positive_rate:
                low = mid
            else:
                high = mid
        return (low + high) / 2

    def features(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Draws ids [n, 26] (Zipf per column) and raw counts [n, 13]."""
        ids = np.stack([np.searchsorted(cdf, rng.random(n)) for cdf in self.cdfs], axis=1)
        counts = np.floor(np.expm1(rng.normal(self.numeric_mu, 1.0, (n, NUM_NUMERIC)).clip(min=0)))
        return ids, counts

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draws ``n`` rows: ids [n, 26], numeric [n, 13] (NaN = missing), labels [n]."""
        ids, counts = self.features(rng, n)
        logits = self.bias + sum(self.logit_terms(ids, counts).values())
        labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logits))).astype(np.int8)
        counts[rng.random(counts.shape) < self.config.missing_rate] = np.nan
        return ids, counts, labels

    def logit_terms(self, ids: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
        """The scaled first-order, pairwise and numeric terms of each row's logit."""
        cfg = self.config
        linear = sum(w[ids[:, j]] for j, w in enumerate(self.first_order)) / np.sqrt(NUM_CATEGORICAL)
        pairwise = sum(
            ((self.latent[i][ids[:, i]] * self.latent[j][ids[:, j]]).sum(axis=1) for i, j in self.pairs),
            np.zeros(len(ids), np.float32),
        ) / np.sqrt(max(len(self.pairs), 1) * cfg.latent_dim)  # no pairs: a zero term
        numeric = (np.log1p(counts) - self.numeric_mu) @ self.numeric_weight / np.sqrt(NUM_NUMERIC)
        return {
            "linear": cfg.linear_scale * linear,
            "pairwise": cfg.pairwise_scale * pairwise,
            "numeric": cfg.numeric_scale * numeric,
        }


def _check_fits_in_memory(config: SyntheticConfig) -> None:
    """Refuses vocabularies whose planted parameters (a CDF, a weight and a latent vector
    per id, with their float64 intermediates) need more than this machine's memory, naming
    latent_dim where the vocabularies would fit with the default one."""
    ids = sum(config.vocab_sizes) * config.vocab_scale
    needed, memory = _planted_bytes(ids, config.latent_dim), memory_bytes()
    if needed <= memory:
        return
    machine = f"~{needed / 2**30:.3g} GiB, more than this machine's {memory / 2**30:.1f} GiB"
    if _planted_bytes(ids, SyntheticConfig.latent_dim) <= memory:  # the vocabularies fit with the default vectors
        raise UserError(f"data.latent_dim: {config.latent_dim} over {ids:.3g} synthetic ids needs {machine}; "
                        "lower it")
    raise UserError(f"data.vocab_scale: {config.vocab_scale:g} gives {ids:.3g} synthetic ids in all, whose planted "
                    f"model needs {machine}; lower it")


def _planted_bytes(ids: float, latent_dim: int) -> float:
    """Peak bytes of the planted parameters of ``ids`` ids: a float64 CDF and its weights, a
    float32 weight, a latent vector drawn in float64 and kept in float32."""
    return ids * (28 + 12 * latent_dim)


@DATASETS.register("synthetic", config=SyntheticConfig)
class SyntheticDataset(DatasetSource):
    """Synthetic Criteo-schema data with planted pairwise interactions (no download)."""

    label = "label"
    generated = True
    carves = True  # one "all" stream: preprocessing carves it
    listed_defaults_alike = True
    # 5: interacting_pairs: 0 has no pairwise term (4 divided its empty sum by 0: every label 0); the
    #    version is in the cache key (``fingerprint``), so no entry of 4 is read again. Rows drawn otherwise
    #    need a new version: tests/datasets/test_synthetic.py pins each version's rows; ``draws_as`` names the
    #    earlier versions whose rows it draws for a config (a run begun on them resumes; others are refused)
    generator_version = 5

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "generator": self.generator_version}

    def draws_as(self, generator: int) -> bool:
        """Version 4 drew this version's rows, but with ``interacting_pairs: 0``."""
        config: SyntheticConfig = self.config  # type: ignore[assignment]
        return super().draws_as(generator) or generator == 4 and config.interacting_pairs > 0

    def default_features(self) -> list[FeatureSpec]:
        config: SyntheticConfig = self.config  # type: ignore[assignment]
        features = criteo_features()
        if config.integer_ids:
            sizes = iter(config.scaled_vocabs())
            features = [replace(f, num_ids=next(sizes)) if f.kind == "categorical" else f for f in features]
        return features

    def default_options(self, features: list[FeatureSpec]) -> dict[str, Any]:
        """``integer_ids`` where the last feature (C26, in the default features) has ``num_ids``."""
        return {"integer_ids": features[-1].num_ids is not None}

    def streams(self) -> dict[str, RowStream]:
        return {"all": self._rows}

    def _rows(self) -> Iterator[pa.RecordBatch]:
        config: SyntheticConfig = self.config  # type: ignore[assignment]
        model = PlantedModel(config)
        for chunk, start in enumerate(range(0, config.rows, config.chunk_rows)):
            n = min(config.chunk_rows, config.rows - start)
            ids, counts, labels = model.sample(np.random.default_rng([config.seed, 1, chunk]), n)
            columns = {"label": pa.array(labels)}
            for j in range(NUM_NUMERIC):
                columns[f"I{j + 1}"] = pa.array(counts[:, j], from_pandas=True)
            for j in range(NUM_CATEGORICAL):
                columns[f"C{j + 1}"] = pa.array(ids[:, j])
            yield pa.RecordBatch.from_pydict(columns)
