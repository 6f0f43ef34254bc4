"""The Triton backward's sync-free bookkeeping (``padded_sort``) and its per-table sort.

``padded_sort`` must group ids exactly as the reference sort does, with arrays sized by the
ids and the unique count left on the device; with ``table_segments`` it sorts each table's
segment on its own and must still give the reference's grouping. The fused update through the
interpreter must not depend on which sort ran.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ctr.kernels.embedding_bag import Backend, FusedOptimizer, fused_embedding_bag, reference
from ctr.kernels.embedding_bag.reference import Lookup
from tests.kernels.conftest import HAS_TRITON, bags, needs_interpreter

pytestmark = needs_interpreter


def _padded_sort():
    from ctr.kernels.embedding_bag.triton import padded_sort

    return padded_sort


def _assert_same_grouping(lookup: Lookup) -> None:
    want = reference.sort_ids(lookup.indices, lookup.offsets, lookup.per_sample_weights, lookup.mode)
    got = _padded_sort()(lookup)
    unique, count = want.rows.numel(), lookup.indices.numel()
    assert int(got.count) == unique
    assert torch.equal(got.rows[:unique], want.rows)
    assert torch.equal(got.segments[: unique + 1], want.segments)
    assert bool((got.segments[unique:] == count).all())
    assert torch.equal(got.bags, want.bags)
    ones = torch.ones(count)  # None means every factor is 1; the reference may skip factors that are 1
    want_scales = ones if want.scales is None else want.scales
    torch.testing.assert_close(ones if got.scales is None else got.scales, want_scales)


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=12),
    rows=st.integers(1, 9),
    mode=st.sampled_from(["sum", "mean"]),
    weighted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_padded_sort_groups_like_the_reference(lengths, rows, mode, weighted, seed):
    indices, offsets = bags(lengths, rows, seed)
    if indices.numel() == 0:
        return
    psw = torch.rand(indices.numel()) if weighted and mode == "sum" else None
    _assert_same_grouping(Lookup(indices, offsets, psw, mode, rows))


@pytest.mark.parametrize("single", [True, False])
def test_per_table_sort_groups_like_one_sort(single):
    tables, batch, rows, pooling = 5, 64, 7, 1 if single else 3
    gen = torch.Generator().manual_seed(3)
    local = torch.randint(0, rows, (tables, batch * pooling), generator=gen)
    indices = (local + torch.arange(tables).unsqueeze(1) * rows).reshape(-1)  # table t's rows after table t-1's
    offsets = torch.arange(0, indices.numel() + 1, pooling)
    lookup = Lookup(indices, offsets, None, "sum", tables * rows, single=single, table_segments=tables)
    _assert_same_grouping(lookup)


def test_fused_update_is_the_same_with_the_per_table_sort():
    tables, batch, rows, dim = 4, 32, 6, 8
    gen = torch.Generator().manual_seed(5)
    indices = (torch.randint(0, rows, (tables, batch), generator=gen) + torch.arange(tables).unsqueeze(1) * rows)
    indices, offsets = indices.reshape(-1), torch.arange(tables * batch + 1)
    grad = torch.randn(tables * batch, dim, generator=gen)
    results = []
    for segments in (1, tables):
        weight = torch.randn(tables * rows, dim, generator=torch.Generator().manual_seed(9))
        opt = FusedOptimizer("rowwise_adagrad", lr=0.1)
        state = opt.init_state(weight)
        out = fused_embedding_bag(weight, state, indices, offsets, None, "sum", opt, Backend.TRITON, single=True,
                                  table_segments=segments)
        out.backward(grad)
        results.append((weight, state["sum"]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=0)


def test_padded_sort_reads_nothing_back(monkeypatch):
    """No ``.item()``/``int()``/``bool()`` of a tensor in the bookkeeping (each would wait for a GPU)."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    indices, offsets = bags([2, 0, 3, 1], 5, 1)
    lookup = Lookup(indices, offsets, None, "mean", 5)

    def refuse(*args, **kwargs):
        raise AssertionError("padded_sort read a tensor's value back to the host")

    for name in ("item", "__int__", "__bool__", "__float__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    result = _padded_sort()(lookup)
    monkeypatch.undo()
    assert int(result.count) == reference.sort_ids(indices, offsets, None, "mean").rows.numel()


@pytest.mark.parametrize("rule", ["sgd", "adagrad", "rowwise_adagrad", "sparse_adam"])
@pytest.mark.parametrize("mode, weighted", [("sum", False), ("sum", True), ("mean", False)])
def test_rows_longer_than_a_chunk_update_as_the_reference(monkeypatch, rule, mode, weighted):
    """Hot rows (far more ids than CHUNK) are summed chunk by chunk by other programs, then
    combined: the update must equal the reference's, whatever the mix of long and short rows."""
    from ctr.kernels.embedding_bag import triton as kernels

    monkeypatch.setattr(kernels, "CHUNK", 4)
    lengths = [int(n) for n in torch.randint(0, 9, (30,), generator=torch.Generator().manual_seed(2))]
    indices, offsets = bags(lengths, 5, seed=4)  # ~120 ids over 5 rows: every row is long
    indices = torch.cat([indices, torch.tensor([7, 8, 8])])  # and a few short ones
    offsets = torch.cat([offsets, offsets[-1:] + torch.tensor([1, 2, 3])])
    psw = torch.rand(indices.numel(), generator=torch.Generator().manual_seed(6)) if weighted else None
    grad = torch.randn(offsets.numel() - 1, 6, generator=torch.Generator().manual_seed(8))
    chunks = _padded_sort()(Lookup(indices, offsets, psw, mode, 10)).chunks
    counts = torch.bincount(indices, minlength=10)
    assert int(chunks.count) == int(((counts + 3) // 4 * (counts > 4)).sum())
    results = {}
    for backend in (Backend.TORCH, Backend.TRITON):
        weight = torch.randn(10, 6, generator=torch.Generator().manual_seed(9))
        opt = FusedOptimizer(rule, lr=0.1)
        state = opt.init_state(weight)
        fused_embedding_bag(weight, state, indices, offsets, psw, mode, opt, backend).backward(grad)
        results[backend] = (weight, state)
    torch.testing.assert_close(results[Backend.TRITON][0], results[Backend.TORCH][0], rtol=1e-5, atol=1e-6)
    for name, value in results[Backend.TORCH][1].items():
        torch.testing.assert_close(results[Backend.TRITON][1][name], value, rtol=1e-5, atol=1e-6)
