import importlib.util

import pytest
import torch

from ctr.batch import Batch, JaggedFeatures


def test_from_lengths_is_feature_major():
    jf = JaggedFeatures.from_lengths(["a", "b"], torch.tensor([1, 2, 3, 4, 5]), torch.tensor([1, 1, 0, 3]))
    assert jf.batch_size == 2
    assert jf.bag("a", 0).tolist() == [1]
    assert jf.bag("a", 1).tolist() == [2]
    assert jf.bag("b", 0).tolist() == []
    assert jf.bag("b", 1).tolist() == [3, 4, 5]
    assert jf.feature_of_value().tolist() == [0, 0, 1, 1, 1]
    assert jf.feature_slice("b") == (2, 5)


def test_from_dense_single_valued():
    ids = torch.tensor([[10, 20], [11, 21], [12, 22]])
    jf = JaggedFeatures.from_dense(["x", "y"], ids)
    assert jf.values.tolist() == [10, 11, 12, 20, 21, 22]
    assert jf.lengths().tolist() == [1] * 6


def test_bad_offsets_rejected():
    with pytest.raises(ValueError, match="F \\* B \\+ 1"):
        JaggedFeatures(["a", "b"], torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2, 3]))


def test_batch_to_moves_everything():
    jf = JaggedFeatures.from_dense(["x"], torch.tensor([[1], [2]]))
    batch = Batch(torch.zeros(2, 3), jf, torch.tensor([0.0, 1.0]), torch.tensor([5, 6]))
    moved = batch.to("cpu")
    assert moved.size == 2 and moved.groups.tolist() == [5, 6]


@pytest.mark.skipif(importlib.util.find_spec("torchrec") is None, reason="torchrec not installed")
def test_to_kjt_round_trip():
    jf = JaggedFeatures.from_lengths(["a", "b"], torch.tensor([1, 2, 3, 4, 5]), torch.tensor([1, 1, 0, 3]))
    kjt = jf.to_kjt()
    assert kjt.keys() == ["a", "b"]
    assert kjt["b"].to_dense()[1].tolist() == [3, 4, 5]
    assert kjt.lengths().tolist() == [1, 1, 0, 3]


def test_single_flag_is_set_for_dense_ids_and_checked():
    jf = JaggedFeatures.from_dense(["a", "b"], torch.tensor([[1, 2], [3, 4]]))
    assert jf.single and jf.to("cpu").single
    with pytest.raises(ValueError, match="single=True"):
        JaggedFeatures(["a"], torch.tensor([1, 2, 3]), torch.tensor([0, 1, 3]), single=True)
