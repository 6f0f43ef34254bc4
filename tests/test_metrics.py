import itertools

import numpy as np
import pytest

from ctr.metrics import EPS, auc, group_auc, logloss, split_metrics


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


def test_logloss_of_logits_clips_the_probabilities():
    assert logloss(np.array([1, 0]), np.array([0.0, 0.0])) == pytest.approx(np.log(2))
    assert logloss(np.array([1]), np.array([-1000.0])) == pytest.approx(-np.log(EPS))  # p clipped to EPS
    assert logloss(np.array([1, 0]), np.array([1000.0, -1000.0])) == pytest.approx(-np.log1p(-EPS))


@pytest.mark.parametrize("logit", [-12.0, -2.5, 0.3, 4.0, 12.0])
def test_logloss_of_logits_is_the_clipped_probabilities_cross_entropy(logit):
    p = 1 / (1 + np.exp(-logit))
    for label, expected in ((1, -np.log(p)), (0, -np.log1p(-p))):
        assert logloss(np.array([label]), np.array([logit])) == pytest.approx(expected, rel=1e-12)


def test_a_nan_score_makes_the_ranking_metrics_nan():
    """A diverged model scores NaN: no AUC is made up by where the sort puts NaN."""
    labels, scores = np.array([1, 0, 1, 0]), np.array([np.nan, 0.1, 0.2, 0.3])
    assert np.isnan(auc(labels, scores))
    assert np.isnan(group_auc(np.array([1, 1, 2, 2]), labels, scores))
    assert np.isnan(logloss(labels, scores))


def test_split_metrics_rank_logits_whose_probabilities_tie():
    """In float64 the sigmoid of every logit above 36.7 is 1.0 (in float32 above 16.6): ranked
    as probabilities, the rows at 40, 45 and 50 tied."""
    logits, labels, groups = np.array([40.0, 45.0, 50.0, -3.0]), np.array([0, 1, 1, 0]), np.array([1, 1, 1, 2])
    assert auc(labels, 1 / (1 + np.exp(-logits))) == 0.75
    metrics = split_metrics(labels, logits, groups)
    assert metrics["auc"] == 1.0 and metrics["gauc"] == 1.0
    assert metrics["logloss"] == pytest.approx((-np.log(EPS) - 2 * np.log1p(-EPS) + np.log1p(np.exp(-3.0))) / 4)
    assert "gauc" not in split_metrics(labels, logits)
