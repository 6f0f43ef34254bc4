"""Triton kernels against the torch reference (CPU: ``TRITON_INTERPRET=1``; tiny shapes).

Hypothesis draws jagged batches (empty bags, repeated ids) and checks the forward, the
sparse gradient and every fused optimizer rule. The kernels' tiles are shrunk for this
module so that tiny batches still span several programs and partial last blocks.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ctr.kernels.embedding_bag import Backend, FusedOptimizer, Rule, embedding_bag, fused_embedding_bag
from ctr.kernels.embedding_bag import reference
from tests.kernels.conftest import HAS_TRITON, bags, needs_interpreter

pytestmark = needs_interpreter
FEW = settings(max_examples=12, deadline=None)


DEFAULT_TILES: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def small_tiles():
    if not HAS_TRITON:
        yield
        return
    from ctr.kernels.embedding_bag import triton as kernels

    DEFAULT_TILES.update(TILE=kernels.TILE, MAX_TILE_ROWS=kernels.MAX_TILE_ROWS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kernels, "TILE", 16)
        patch.setattr(kernels, "MAX_TILE_ROWS", 4)
        yield


@st.composite
def batches(draw):
    """(weight, indices, offsets, per_sample_weights | None, mode) with repeats and empty bags."""
    rows = draw(st.integers(1, 12))
    dim = draw(st.sampled_from([1, 3, 8, 17]))
    lengths = draw(st.lists(st.integers(0, 12), min_size=1, max_size=9))
    seed = draw(st.integers(0, 2**16))
    mode = draw(st.sampled_from(["sum", "mean"]))
    weighted = mode == "sum" and draw(st.booleans())
    indices, offsets = bags(lengths, rows, seed)
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, dim, generator=gen)
    psw = torch.rand(indices.numel(), generator=gen) if weighted else None
    return weight, indices, offsets, psw, mode


@FEW
@given(batches())
def test_forward_matches_reference(batch):
    weight, indices, offsets, psw, mode = batch
    got = embedding_bag(weight, indices, offsets, psw, mode, backend=Backend.TRITON)
    torch.testing.assert_close(got, reference.embedding_bag(weight, indices, offsets, psw, mode))


@FEW
@given(batches())
def test_sparse_gradient_matches_reference(batch):
    weight, indices, offsets, psw, mode = batch
    grad_out = torch.randn(offsets.numel() - 1, weight.shape[1])
    results = []
    for backend in (Backend.TRITON, Backend.TORCH):
        w = weight.clone().requires_grad_()
        p = None if psw is None else psw.clone().requires_grad_()
        (embedding_bag(w, indices, offsets, p, mode, backend=backend) * grad_out).sum().backward()
        results.append((w.grad, p))
    (got, got_p), (want, want_p) = results
    assert got.is_sparse
    assert got.coalesce().indices()[0].tolist() == torch.unique(indices).tolist()  # touched rows only
    torch.testing.assert_close(got.to_dense(), want.to_dense())
    if psw is not None:
        torch.testing.assert_close(got_p.grad, want_p.grad)


@FEW
@given(batches(), st.sampled_from(list(Rule)))
def test_fused_update_matches_reference(batch, rule):
    weight, indices, offsets, psw, mode = batch
    opt = FusedOptimizer(rule, lr=0.05)
    tables = {b: weight.clone() for b in (Backend.TRITON, Backend.TORCH)}
    states = {b: opt.init_state(tables[b]) for b in tables}
    for step in range(2):  # two steps: the second reads the state the first wrote
        grad_out = torch.randn(offsets.numel() - 1, weight.shape[1], generator=torch.Generator().manual_seed(step))
        for backend, table in tables.items():
            out = fused_embedding_bag(table, states[backend], indices, offsets, psw, mode, opt, backend)
            (out * grad_out).sum().backward()
    torch.testing.assert_close(tables[Backend.TRITON], tables[Backend.TORCH])
    for name in states[Backend.TORCH]:
        torch.testing.assert_close(states[Backend.TRITON][name], states[Backend.TORCH][name])
    untouched = torch.ones(weight.shape[0], dtype=torch.bool)
    untouched[indices] = False
    assert torch.equal(tables[Backend.TRITON][untouched], weight[untouched])


@pytest.mark.parametrize("rule", list(Rule))
def test_half_weights_fused_update_and_forward(rule):
    indices, offsets = bags([3, 0, 5, 1], rows=6, seed=1)
    weight = torch.randn(6, 8).half()
    got = embedding_bag(weight, indices, offsets, backend=Backend.TRITON)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got, reference.embedding_bag(weight, indices, offsets), atol=2e-3, rtol=1e-3)
    opt = FusedOptimizer(rule, lr=0.05)
    tables = [weight.clone(), weight.clone()]
    grad_out = torch.randn(4, 8)
    for table, backend in zip(tables, (Backend.TRITON, Backend.TORCH)):
        out = fused_embedding_bag(table, opt.init_state(table), indices, offsets, None, "sum", opt, backend)
        (out.float() * grad_out).sum().backward()
    torch.testing.assert_close(tables[0], tables[1], atol=2e-3, rtol=1e-3)


def test_int32_indices_and_all_empty_bags():
    weight = torch.randn(5, 4)
    indices, offsets = bags([2, 3], rows=5, seed=2)
    got = embedding_bag(weight, indices.int(), offsets, backend=Backend.TRITON)
    torch.testing.assert_close(got, reference.embedding_bag(weight, indices, offsets))
    empty = embedding_bag(weight, torch.zeros(0, dtype=torch.int64), torch.zeros(4, dtype=torch.int64), backend=Backend.TRITON)
    assert torch.equal(empty, torch.zeros(3, 4))
    opt = FusedOptimizer("rowwise_adagrad", lr=0.1)
    table = weight.clone()
    out = fused_embedding_bag(table, opt.init_state(table), torch.zeros(0, dtype=torch.int64),
                              torch.zeros(4, dtype=torch.int64), None, "sum", opt, Backend.TRITON)
    out.sum().backward()
    assert torch.equal(table, weight)


def test_default_tiles_on_more_bags_and_rows_than_one_block(monkeypatch):
    from ctr.kernels.embedding_bag import triton as kernels

    for name, value in DEFAULT_TILES.items():
        monkeypatch.setattr(kernels, name, value)
    lengths = torch.randint(0, 4, (300,), generator=torch.Generator().manual_seed(0)).tolist()
    indices, offsets = bags(lengths, rows=400, seed=3)
    weight = torch.randn(400, 8)
    torch.testing.assert_close(
        embedding_bag(weight, indices, offsets, backend=Backend.TRITON), reference.embedding_bag(weight, indices, offsets)
    )
    opt = FusedOptimizer("rowwise_adagrad", lr=0.1)
    grad_out = torch.randn(300, 8)
    tables = [weight.clone(), weight.clone()]
    for table, backend in zip(tables, (Backend.TRITON, Backend.TORCH)):
        (fused_embedding_bag(table, opt.init_state(table), indices, offsets, None, "sum", opt, backend) * grad_out).sum().backward()
    assert torch.unique(indices).numel() > 128  # several blocks of unique rows
    torch.testing.assert_close(tables[0], tables[1])


@pytest.mark.parametrize("indices, offsets, psw, said", [
    ([4], [0, 1], None, r"ids must lie in \[0, 4\)"),  # one past the last row: it read the memory after the table
    ([-1], [0, 1], None, r"ids must lie in \[0, 4\)"),  # it pooled to zeros
    ([0, 1], [0, 3], None, "offsets must start at 0, never decrease and end at 2"),  # it read past the ids
    ([0, 1], [1, 2], None, "offsets must start at 0"),
    ([0, 1, 2], [0, 2, 1, 3], None, "never decrease"),
    ([0, 1, 2], [0, 3], [1.0, 1.0], r"per_sample_weights: \(2,\) for ids \(3,\)"),
    ([0.0, 1.7], [0, 2], None, "ids and offsets must be integer tensors, got torch.float32"),  # 1.7 pooled row 1
    ([0, 1], [0.0, 2.0], None, "ids and offsets must be integer tensors"),  # triton's type error at compile
    ([[0, 1], [2, 3]], [0, 2, 4], None, r"ids must be 1-D \[N\], got shape \(2, 2\)"),  # pooled flat, then failed
])
def test_ids_and_offsets_outside_the_buffers_are_refused(indices, offsets, psw, said):
    """The kernels do not bound their loads and stores: a bad id or offset read (or, in the
    fused backward, wrote) memory outside the table; the forward refuses it first."""
    guard = torch.full((5, 4), 7.0)
    table = guard[:4]  # the row after the table holds 7s: a write to it would show
    ids, bounds = torch.tensor(indices), torch.tensor(offsets)
    weights = None if psw is None else torch.tensor(psw)
    with pytest.raises((RuntimeError, ValueError), match=said):
        embedding_bag(table, ids, bounds, weights, backend=Backend.TRITON)
    opt = FusedOptimizer("sgd", lr=1.0)
    with pytest.raises((RuntimeError, ValueError), match=said):
        fused_embedding_bag(table, opt.init_state(table), ids, bounds, weights, "sum", opt, Backend.TRITON)
    assert torch.equal(guard[4], torch.full((4,), 7.0))
