"""The training lookup of table methods (distinct rows gathered once) gives the same bags
and the same sparse gradient, with one entry per distinct row as a plain embedding bag."""

import torch

from ctr.embeddings.table import _DistinctRows  # noqa: PLC2701 (the op under test)
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
    pooled = reference.embedding_bag(_DistinctRows.apply(weight, unique), inverse, offsets, psw, sparse=False)
    assert torch.allclose(pooled, plain, atol=1e-6)
    pooled.pow(2).sum().backward()
    grad = weight.grad
    assert grad.is_sparse and grad._nnz() == unique.numel()  # one entry per distinct row
    assert grad._indices()[0].tolist() == unique.tolist()
    assert torch.allclose(grad.to_dense(), expected.to_dense(), atol=1e-5)
