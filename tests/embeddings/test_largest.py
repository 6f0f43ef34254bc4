import math

import pytest
import torch

from ctr.embeddings.largest import SMALL, _bisect, kth_largest, largest, largest_mask


def topk_mask(values, k):
    mask = torch.zeros(values.numel(), dtype=torch.bool)
    mask[torch.topk(values.flatten(), k).indices] = True
    return mask.view_as(values)


@pytest.mark.parametrize("n", [1000, SMALL + 1000])  # torch's selection; the sampled bracket
@pytest.mark.parametrize("share", [1e-6, 0.3, 0.999999])
def test_the_mask_is_topk_s_set_and_the_kth_value_is_exact(n, share):
    values = torch.randn(n, generator=torch.Generator().manual_seed(n))
    k = max(int(share * n), 1)
    assert torch.equal(largest_mask(values, k), topk_mask(values, k))
    assert kth_largest(values, k) == float(torch.topk(values, k).values[-1]) == _bisect(values, k)


def test_ties_at_the_kth_value_keep_exactly_k_first_in_order():
    values = torch.zeros(SMALL + 1000)
    values[-100:] = 1.0
    mask = largest_mask(values, 1000)
    assert int(mask.sum()) == 1000 and bool(mask[-100:].all()) and bool(mask[:900].all())


def test_negative_and_infinite_values_order_as_floats():
    values = torch.tensor([[3.0, -1.0, -float("inf")], [0.0, -0.0, float("inf")]])
    assert largest_mask(values, 3).tolist() == [[True, False, False], [True, False, True]]
    assert largest_mask(values, 0).sum() == 0 and largest_mask(values, 9).all()
    assert _bisect(values.flatten(), 6) == -float("inf") and _bisect(values.flatten(), 2) == 3.0


def test_largest_gives_the_mask_and_the_smallest_kept_value():
    values = torch.tensor([[3.0, -1.0, 7.0], [0.5, 2.0, -4.0]])
    mask, threshold = largest(values, 4)
    assert torch.equal(mask, largest_mask(values, 4)) and threshold == 0.5 == float(values[mask].min())
    assert largest(values, 6)[1] == -4.0 and largest(values, 0)[1] == math.inf
