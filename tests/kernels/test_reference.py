import pytest
import torch

from ctr.kernels.embedding_bag import Backend, BackendUnavailable, embedding_bag, resolve_backend
from ctr.kernels.embedding_bag.reference import embedding_bag as reference


def naive(weight, indices, offsets, psw, mode):
    out = []
    for b in range(offsets.numel() - 1):
        rows = indices[offsets[b] : offsets[b + 1]]
        vec = weight[rows] * (psw[offsets[b] : offsets[b + 1]].unsqueeze(1) if psw is not None else 1)
        pooled = vec.sum(0) if rows.numel() else torch.zeros(weight.shape[1])
        out.append(pooled / max(rows.numel(), 1) if mode == "mean" else pooled)
    return torch.stack(out)


@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
def test_reference_matches_naive_loop_with_empty_bags(mode, weighted):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(30, 4, generator=gen)
    lengths = torch.tensor([2, 0, 3, 1, 0, 5])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    indices = torch.randint(0, 30, (int(lengths.sum()),), generator=gen)
    psw = torch.rand(indices.numel(), generator=gen) if weighted else None
    if weighted and mode == "mean":  # a weighted mean has no one meaning (torch refuses it too)
        with pytest.raises(ValueError, match=r"^per_sample_weights need mode='sum'$"):
            reference(weight, indices, offsets, psw, mode)
        return
    got = reference(weight, indices, offsets, psw, mode)
    torch.testing.assert_close(got, naive(weight, indices, offsets, psw, mode))


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match=r"^mode must be 'sum' or 'mean', got 'max'$"):
        reference(torch.zeros(3, 2), torch.tensor([0]), torch.tensor([0]), None, "max")


def test_offsets_ending_short_of_the_ids_are_refused():
    """torch's embedding_bag refuses offsets that start past 0 or end past the ids, but drops
    the ids past an end short of them (the Triton and FBGEMM backends refuse that too)."""
    with pytest.raises(RuntimeError, match=r"^embedding_bag: offsets must start at 0, never decrease and end at 4$"):
        reference(torch.zeros(10, 2), torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2, 3]))


def test_sparse_gradient_touches_only_looked_up_rows():
    weight = torch.randn(10, 3, requires_grad=True)
    out = reference(weight, torch.tensor([1, 4, 4]), torch.tensor([0, 2, 3]))
    out.sum().backward()
    assert weight.grad.is_sparse
    assert sorted(weight.grad.coalesce().indices()[0].tolist()) == [1, 4]


def test_half_weights_accumulate_in_fp32():
    weight = torch.full((2, 4), 0.1, dtype=torch.float16)
    out = reference(weight, torch.zeros(1000, dtype=torch.int64), torch.tensor([0, 1000]))
    assert out.dtype == torch.float16
    exact = 1000 * torch.tensor(0.1, dtype=torch.float16).item()
    assert out.float()[0, 0].item() == pytest.approx(exact, rel=1e-3)


def test_resolution_order(monkeypatch):
    monkeypatch.delenv("CTR_KERNEL_BACKEND", raising=False)
    assert resolve_backend(None, "cpu") is Backend.TORCH
    monkeypatch.setenv("CTR_KERNEL_BACKEND", "torch")
    assert resolve_backend(None, "cpu") is Backend.TORCH
    assert resolve_backend("torch", "cpu") is Backend.TORCH


def test_explicit_unavailable_backend_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailable, match="triton"):
        resolve_backend("triton", "cpu")
    with pytest.raises(BackendUnavailable, match="unknown kernel backend 'cuda9'"):
        resolve_backend("cuda9", "cpu")


def test_dispatch_torch_backend():
    weight = torch.randn(5, 2)
    out = embedding_bag(weight, torch.tensor([0, 1]), torch.tensor([0, 2]), backend=Backend.TORCH)
    torch.testing.assert_close(out, (weight[0] + weight[1]).unsqueeze(0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_backend_gives_a_half_table_its_sparse_gradient(dtype):
    """An fp16/bf16 table is pooled in fp32; its sparse gradient reaches it in its dtype (the
    cast's backward refused a sparse gradient before)."""
    master = torch.randn(10, 4)
    weight = master.to(dtype).requires_grad_()
    indices, offsets, psw = torch.tensor([1, 2, 2, 7]), torch.tensor([0, 1, 3, 4]), torch.tensor([0.5, 1.0, 2.0, 3.0])
    out = embedding_bag(weight, indices, offsets, psw, backend=Backend.TORCH)
    assert out.dtype == dtype
    (out.float() * torch.arange(12.0).view(3, 4)).sum().backward()
    exact = master.to(dtype).float().requires_grad_()
    (reference(exact, indices, offsets, psw) * torch.arange(12.0).view(3, 4)).sum().backward()
    assert weight.grad.is_sparse and weight.grad.dtype == dtype
    torch.testing.assert_close(weight.grad.to_dense().float(), exact.grad.to_dense(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("indices, offsets, said", [
    ([True, False], [0, 2], "must be integer tensors"),  # torch pooled rows 1 and 0
    ([1, 2, 3], [0, 2, 1, 3], "never decrease"),  # torch: 'Expected i < index_size to be true'
])
def test_the_reference_refuses_bags_as_the_other_backends_do(indices, offsets, said):
    with pytest.raises((RuntimeError, ValueError), match=said):
        reference(torch.zeros(10, 2), torch.tensor(indices), torch.tensor(offsets))


class _Pooled(torch.nn.Module):
    def forward(self, indices, offsets):
        return embedding_bag(torch.ones(10, 2), indices, offsets)


def test_an_exported_lookup_names_the_bad_offsets_without_a_symbol():
    """Traced with a dynamic number of ids, the message read 'end at s23'."""
    ids, bags = torch.export.Dim("ids", min=0, max=1000), torch.export.Dim("bags", min=1, max=1000)
    program = torch.export.export(
        _Pooled(), (torch.tensor([1, 2, 3]), torch.tensor([0, 1, 3])), dynamic_shapes=({0: ids}, {0: bags + 1})
    ).module()
    with pytest.raises(RuntimeError, match=r"^embedding_bag: offsets must start at 0, never decrease and end at the "
                                           r"number of ids$"):
        program(torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1, 3]))
