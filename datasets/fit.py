"""Pass one of preprocessing: count tokens and fit numeric statistics on training rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ctr.datasets.transforms import base_numeric, categorical_tokens, numeric_values, sequence_tokens
from ctr.datasets.vocab import IdCounter, IdentityVocabulary, TokenCounter, Vocabulary
from ctr.schema import FeatureSpec, NumericStats

RESERVOIR = 100_000
# A spread below this many float64 epsilons of the mean's size is the mean's rounding, not data
ROUNDING_SPREAD = 64 * float(np.finfo(np.float64).eps)


class NumericFitter:
    """Mean, std and a uniform reservoir sample (for quantiles) of a transformed column.

    The variance is merged batch by batch from each batch's mean and sum of squared
    deviations (Chan et al.), not taken as E[x^2] - E[x]^2, which cancels to noise for values
    far from zero (millisecond times within a second: a std of 291 came out as 0, then 1).
    A column constant up to that rounding (a std below ``ROUNDING_SPREAD`` of its mean's
    size) gets std 1, as a constant column does: its std was the rounding noise (a column of
    0.1 had std 1.4e-17, and a valid value of 0.2 standardized to 7e15)."""

    def __init__(self, spec: FeatureSpec, seed: int):
        self.spec = spec
        self.count, self.mean, self.deviations = 0, 0.0, 0.0
        self.sample = np.empty(0)
        self.sample_keys = np.empty(0)
        self.rng = np.random.default_rng(seed)

    def add(self, values: np.ndarray) -> None:
        values = base_numeric(values, self.spec.transform)
        values = values[~np.isnan(values)]
        if values.size:
            mean = float(values.mean())
            self._merge(values.size, mean, float(np.square(values - mean).sum()))
        if self.spec.transform == "quantile":
            self._reservoir(values)

    def _merge(self, count: int, mean: float, deviations: float) -> None:
        """Adds a batch of ``count`` values with mean ``mean`` and sum of squared deviations
        ``deviations`` from it."""
        total = self.count + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.deviations += deviations + delta**2 * self.count * count / total
        self.count = total

    def _reservoir(self, values: np.ndarray) -> None:
        # keeping the values with the RESERVOIR smallest random keys is a uniform sample
        pooled = np.concatenate([self.sample, values])
        pooled_keys = np.concatenate([self.sample_keys, self.rng.random(values.size)])
        if pooled.size > RESERVOIR:
            keep = np.argpartition(pooled_keys, RESERVOIR)[:RESERVOIR]
            pooled, pooled_keys = pooled[keep], pooled_keys[keep]
        self.sample, self.sample_keys = pooled, pooled_keys

    def result(self) -> NumericStats:
        var = self.deviations / self.count if self.count else 1.0
        boundaries: list[float] = []
        if self.spec.transform == "quantile" and self.sample.size:
            quantiles = np.linspace(0, 1, self.spec.num_buckets + 1)[1:-1]
            boundaries = sorted(set(np.quantile(self.sample, quantiles).tolist()))
        std = float(np.sqrt(var))
        constant = std <= ROUNDING_SPREAD * abs(self.mean)  # a std of 0 too
        return NumericStats(mean=self.mean, std=1.0 if constant else std, boundaries=boundaries)


class Fitter:
    """Accumulates everything the encoder needs from training record batches.

    Args:
        features: the feature specs; ``table_of`` maps a feature to its vocabulary's table.
    """

    def __init__(self, features: list[FeatureSpec], table_of: dict[str, str], seed: int):
        self.features = features
        self.table_of = table_of
        owners = {spec.name: spec for spec in features if spec.is_sparse and spec.name == table_of[spec.name]}
        self.owners = owners
        self.counters = {
            table: IdCounter(spec.num_ids, table) if spec.num_ids else TokenCounter() for table, spec in owners.items()
        }
        self.numeric = {f.name: NumericFitter(f, seed) for f in features if f.kind == "numeric"}

    def add(self, batch: pa.RecordBatch, where: str) -> None:
        for spec in self.features:
            column = batch.column(spec.column)
            if spec.kind == "numeric":
                self.numeric[spec.name].add(numeric_values(column, spec, where))
            elif spec.kind == "categorical":
                counter = self.counters[self.table_of[spec.name]]
                counter.add(column if isinstance(counter, IdCounter) else categorical_tokens(column, spec))
            else:
                self.counters[self.table_of[spec.name]].add(sequence_tokens(column, spec).tokens)

    def vocabularies(self) -> dict[str, Vocabulary | IdentityVocabulary]:
        """One vocabulary per table, fitted with the settings of the table's owner feature."""
        return {
            table: IdentityVocabulary(counter, self.owners[table]) if isinstance(counter, IdCounter)
            else Vocabulary.fit(counter.result(), self.owners[table])
            for table, counter in self.counters.items()
        }

    def numeric_stats(self) -> dict[str, NumericStats]:
        return {name: fitter.result() for name, fitter in self.numeric.items()}
