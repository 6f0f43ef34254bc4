import itertools

import numpy as np
import pytest

from ctr.metrics import auc, group_auc, logloss


def brute_auc(labels, scores):
    pos = [s for y, s in zip(labels, scores) if y == 1]
    neg = [s for y, s in zip(labels, scores) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = rng.integers(0, 10, 200).astype(np.float32)  # many ties
    assert auc(labels, scores) == pytest.approx(brute_auc(labels, scores), abs=1e-12)


def test_auc_extremes():
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    assert np.isnan(auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_group_auc_weights_by_impressions_and_skips_single_class():
    groups = np.array([1, 1, 1, 1, 2, 2, 3, 3])
    labels = np.array([0, 1, 0, 1, 0, 1, 1, 1])
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.7, 0.3, 0.5, 0.6])
    # group 1: AUC 1 (4 rows); group 2: AUC 0 (2 rows); group 3 has one class: skipped
    assert group_auc(groups, labels, scores) == pytest.approx((4 * 1.0 + 2 * 0.0) / 6)


def test_logloss():
    assert logloss(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(np.log(2))
    assert np.isfinite(logloss(np.array([1]), np.array([0.0])))


def test_a_nan_score_makes_the_ranking_metrics_nan():
    """A diverged model scores NaN: no AUC is made up by where the sort puts NaN."""
    labels, scores = np.array([1, 0, 1, 0]), np.array([np.nan, 0.1, 0.2, 0.3])
    assert np.isnan(auc(labels, scores))
    assert np.isnan(group_auc(np.array([1, 1, 2, 2]), labels, scores))
    assert np.isnan(logloss(labels, scores))


def test_confident_scores_are_ranked_from_float64_probabilities():
    """Training, eval and predict take the sigmoid in float64: in float32 every logit above
    16.6 is 1.0, and those rows would tie."""
    import torch

    from ctr.train.task import probabilities

    logits = torch.tensor([17.0, 18.0, 20.0, 25.0, 30.0, 16.5])
    labels = np.array([0, 1, 1, 1, 1, 0])
    assert auc(labels, probabilities(logits).numpy()) == 1.0
    assert auc(labels, torch.sigmoid(logits).numpy()) == 0.75  # what float32 gave
