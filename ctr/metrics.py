"""Exact ranking and calibration metrics: AUC, group AUC, logloss (numpy, float64).

Evaluations pass the model's logits: the sigmoid is monotone, so AUC and group AUC rank the
logits as they would the probabilities, without the ties of rounding (in float64 the sigmoid
of every logit above 36.7 is 1.0, in float32 above 16.6), and logloss takes log-sigmoids.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

EPS = 1e-7
LOGIT_BOUND = math.log1p(-EPS) - math.log(EPS)  # sigmoid(±LOGIT_BOUND) = 1 − EPS and EPS


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN when only one class is present or
    a score is NaN (a diverged model: ranking NaN as any value would make up an AUC)."""
    if np.isnan(scores).any():
        return float("nan")
    return _grouped_auc(np.zeros(labels.shape[0], dtype=np.int64), labels, scores)[0][0]


def group_auc(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Impression-weighted mean of per-group AUC; groups with a single class are skipped;
    NaN when a score is NaN.

    As in DIN (Zhou et al., 2018, §6.3, Eq. 10): GAUC = Σ_g n_g · AUC_g / Σ_g n_g over
    groups g with both classes, n_g the group's impressions.
    """
    if np.isnan(scores).any():
        return float("nan")
    per_group, sizes = _grouped_auc(groups, labels, scores)
    valid = ~np.isnan(per_group)
    if not valid.any():
        return float("nan")
    return float((per_group[valid] * sizes[valid]).sum() / sizes[valid].sum())


def logloss(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy of the probabilities sigmoid(``logits``) [N] clipped to
    [EPS, 1 − EPS] (as sklearn and FuxiCTR clip them), from the logits clipped to
    ±LOGIT_BOUND in float64: −log sigmoid(z) = log(1 + e^−z), so a confident row loses no
    precision to 1 − p; NaN when a logit is NaN."""
    z = np.clip(logits.astype(np.float64), -LOGIT_BOUND, LOGIT_BOUND)
    y = labels.astype(np.float64)
    return float((y * np.logaddexp(0.0, -z) + (1 - y) * np.logaddexp(0.0, z)).mean())


def split_metrics(labels: np.ndarray, logits: np.ndarray, groups: np.ndarray | None = None) -> dict[str, float]:
    """``auc`` and ``logloss`` of ``logits`` [N] against ``labels`` [N], and ``gauc`` when the
    rows have ``groups`` [N]: what every evaluation reports (one process or distributed)."""
    metrics = {"auc": auc(labels, logits), "logloss": logloss(labels, logits)}
    if groups is not None:
        metrics["gauc"] = group_auc(groups, labels, logits)
    return metrics


def _grouped_auc(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-group AUC (NaN for single-class groups) and group sizes, via tie-averaged ranks."""
    scores = scores.astype(np.float64)
    order = np.lexsort((scores, groups))
    g, s, y = groups[order], scores[order], labels[order].astype(np.float64)
    n = g.shape[0]
    if n == 0:
        return np.array([np.nan]), np.array([0])
    new_group = np.r_[True, g[1:] != g[:-1]]
    group_index = np.cumsum(new_group) - 1
    position = np.arange(n) - np.flatnonzero(new_group)[group_index]
    new_tie = new_group | np.r_[True, s[1:] != s[:-1]]
    tie_index = np.cumsum(new_tie) - 1
    tie_size = np.bincount(tie_index)
    rank = position[new_tie][tie_index] + (tie_size[tie_index] - 1) / 2.0 + 1.0
    sizes = np.bincount(group_index)
    positives = np.bincount(group_index, weights=y)
    negatives = sizes - positives
    rank_sum = np.bincount(group_index, weights=rank * y)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_group = (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)
    per_group[(positives == 0) | (negatives == 0)] = np.nan
    return per_group, sizes


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value), e.g. of a metric over seeds."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def metrics_json(report: dict[str, Any]) -> str:
    """``report`` as strict JSON (jq and other strict parsers read it): a metric that is
    undefined (nan: an AUC on one class) is written as null."""
    return json.dumps(_nulls_for_nan(report), indent=2, allow_nan=False)


def metrics_from_json(text: str) -> dict[str, Any]:
    """A report ``metrics_json`` wrote, with its undefined metrics nan again; a ValueError
    for text that is not a JSON object, or whose ``best_checkpoint`` is no path (a non-empty
    string: ``""`` named the run folder itself)."""
    report = json.loads(text)
    if not isinstance(report, dict):
        raise ValueError(f"a JSON {type(report).__name__}, not an object")
    best = report.get("best_checkpoint")
    if "best_checkpoint" in report and not (isinstance(best, str) and best):
        raise ValueError(f"best_checkpoint is {json.dumps(best)}, not a path")
    for split in ("valid", "test"):
        if isinstance(report.get(split), dict):
            report[split] = {k: math.nan if v is None else v for k, v in report[split].items()}
    return report


def _nulls_for_nan(value: Any) -> Any:
    """``value`` with every float that is not finite, at any depth, replaced by None."""
    if isinstance(value, dict):
        return {k: _nulls_for_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nulls_for_nan(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
