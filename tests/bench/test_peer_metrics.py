"""benchmarks/peer.py scores DeepCTR-Torch's predictions with ctr's metrics, which read logits."""

from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.peer import _scores
from ctr.metrics import EPS, auc, group_auc


class Predicting:
    """A model whose ``predict`` returns fixed probabilities [N, 1], as DeepCTR-Torch's does (float32)."""

    def __init__(self, probs: list[float]):
        self.probs = np.array(probs, dtype=np.float32).reshape(-1, 1)

    def predict(self, inputs: dict, batch_size: int) -> np.ndarray:
        return self.probs


def test_the_peers_metrics_are_those_of_its_probabilities():
    """Its logloss is the cross-entropy of its probabilities clipped to [EPS, 1 - EPS] (it was
    that of the probabilities read as logits), its AUC and group AUC rank them as they are."""
    probs = [0.0, 1e-9, 0.3, 0.9, 1.0, 1.0, 0.6, 0.2]
    labels, groups = np.array([0, 0, 1, 0, 1, 1, 0, 1]), np.array([1, 1, 1, 1, 2, 2, 2, 2])
    scored = _scores(Predicting(probs), {}, SimpleNamespace(labels=labels, groups=groups), 4)
    p = np.clip(np.array(probs, dtype=np.float32).astype(np.float64), EPS, 1 - EPS)
    assert scored["logloss"] == pytest.approx(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean(), rel=1e-12)
    assert scored["auc"] == auc(labels, np.array(probs)) and scored["gauc"] == group_auc(groups, labels, np.array(probs))
