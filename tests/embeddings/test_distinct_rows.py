"""The training lookup of table methods (distinct rows gathered once) gives the same bags
and the same sparse gradient, with one entry per distinct row as a plain embedding bag."""

import torch

from ctr.embeddings.table import _BagOfBlock, _GatheredRows  # noqa: PLC2701 (the ops under test)
from ctr.kernels.embedding_bag import reference


def test_distinct_rows_lookup_matches_the_plain_bag_and_its_gradient():
    torch.manual_seed(0)
    weight = torch.randn(50, 4, requires_grad=True)
    rows = torch.randint(0, 50, (40,))
    offsets = torch.tensor([0, 3, 3, 10, 25, 40])
    psw = torch.rand(40)
    plain = reference.embedding_bag(weight, rows, offsets, psw)
    plain.pow(2).sum().backward()
    expected = weight.grad.coalesce()
    weight.grad = None
    unique, inverse = torch.unique(rows, return_inverse=True)
    pooled = _BagOfBlock.apply(_GatheredRows.apply(weight, unique, True, 1), inverse, offsets, psw, 1)
    assert torch.allclose(pooled, plain, atol=1e-6)
    pooled.pow(2).sum().backward()
    grad = weight.grad
    assert grad.is_sparse and grad._nnz() == unique.numel()  # one entry per distinct row
    assert grad._indices()[0].tolist() == unique.tolist()
    assert torch.allclose(grad.to_dense(), expected.to_dense(), atol=1e-5)


def test_bag_of_block_gradients_match_autograd_of_a_plain_weighted_sum():
    torch.manual_seed(0)
    block = torch.randn(6, 3, requires_grad=True)
    index = torch.tensor([0, 5, 2, 2, 1, 4, 0])
    offsets = torch.tensor([0, 2, 2, 5, 7])
    weights = torch.rand(7, requires_grad=True)
    upstream = torch.randn(4, 3)
    bag = torch.tensor([0, 0, 2, 2, 2, 3, 3])
    plain = torch.zeros(4, 3).index_add(0, bag, block[index] * weights.unsqueeze(1))
    expected = torch.autograd.grad((plain * upstream).sum(), (block, weights))
    out = _BagOfBlock.apply(block, index, offsets, weights, 1)
    assert torch.allclose(out, plain, atol=1e-6)
    got = torch.autograd.grad((out * upstream).sum(), (block, weights))
    assert all(torch.allclose(g, e, atol=1e-6) for g, e in zip(got, expected))


def test_grouped_bags_take_a_transposed_concatenated_gradient_in_place():
    """[F, B, D] bags, transposed and concatenated with another field block downstream (as
    DeepFM's field vectors are): same values and row gradients as the flat [F·B, D] bags."""
    torch.manual_seed(0)
    features, batch, dim = 3, 5, 4
    block = torch.randn(9, dim, requires_grad=True)
    index = torch.randint(0, 9, (features * batch,))
    offsets = torch.arange(features * batch + 1)
    other = torch.randn(batch, 2, dim)
    upstream = torch.randn(batch, features + 2, dim)

    def loss(pooled):  # [B, F, D] → fields [B, F + 2, D]
        return (torch.cat([pooled, other], 1) * upstream).sum()

    flat = _BagOfBlock.apply(block, index, offsets, None, 1).view(features, batch, dim).transpose(0, 1)
    expected = torch.autograd.grad(loss(flat), block)[0]
    grouped = _BagOfBlock.apply(block, index, offsets, None, features)
    assert grouped.shape == (features, batch, dim)
    torch.testing.assert_close(grouped.transpose(0, 1), flat)
    torch.testing.assert_close(torch.autograd.grad(loss(grouped.transpose(0, 1)), block)[0], expected)
