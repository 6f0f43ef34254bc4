"""The native CPU kernels (C, built on first use) against their torch twins, and the way the
build falls back to torch ops when it cannot run."""

import logging

import pytest
import torch

from ctr.kernels import native
from ctr.kernels.embedding_bag import FusedOptimizer, reference, single_id_row_grads
from ctr.kernels.embedding_bag import native as bag_native
from ctr.kernels.embedding_bag.reference import Lookup
from ctr.kernels.fm import fm, fm_fields
from ctr.kernels.fm import native as fm_native
from ctr.models.layers import FactorizationMachine, NumericEmbedding

needs_native = pytest.mark.skipif(native.library() is None, reason="no C compiler: native kernels are off")


@pytest.fixture
def native_off(monkeypatch):
    """Runs the test body with the native kernels switched off (``CTR_NATIVE=0``)."""
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    native.library.cache_clear()
    yield
    monkeypatch.delenv(native.ENV_SWITCH)
    native.library.cache_clear()


def native_fm_calls(monkeypatch) -> list[str]:
    """The names of the FM's C kernels called from now on (``forward``, ``backward``)."""
    calls = []
    for name in ("forward", "backward"):
        real = getattr(fm_native, name)
        monkeypatch.setattr(fm_native, name, lambda *args, _name=name, _real=real: calls.append(_name) or _real(*args))
    return calls


def native_adagrad_calls(monkeypatch) -> list[str]:
    """The C Adagrad updates of the bag backend run from now on (``rows``, ``single``)."""
    calls = []
    for name in ("rows", "single"):
        real = getattr(bag_native, f"_adagrad_{name}")
        monkeypatch.setattr(bag_native, f"_adagrad_{name}",
                            lambda *args, _name=name, _real=real: calls.append(_name) or _real(*args))
    return calls


def fm_step(fm, numeric, table, dense, upstream):
    """FM + fields over a strided [B, S, D] view (as a transposed lookup output): outputs and
    the gradients of the table, the FM vectors and the numeric vectors."""
    for p in (fm.field_weight, numeric.vectors):
        p.grad = None
    leaf = table.clone().requires_grad_(True)
    out, fields = fm.with_numeric(leaf.transpose(0, 1), dense, numeric)
    (0.7 * out.sum() + (fields * upstream).sum()).backward()
    return out.detach(), fields.detach(), leaf.grad, fm.field_weight.grad.clone(), numeric.vectors.grad.clone()


@needs_native
def test_native_fm_with_numeric_fields_matches_torch(native_off, request):
    torch.manual_seed(0)
    batch, sparse, num_dense, dim = 9, 4, 3, 5
    fm, numeric = FactorizationMachine(sparse + num_dense, dim), NumericEmbedding(num_dense, dim, init_std=1.0)
    torch.nn.init.normal_(fm.field_weight)
    table, dense = torch.randn(sparse, batch, dim), torch.rand(batch, num_dense)
    upstream = torch.randn(batch, sparse + num_dense, dim)
    monkeypatch = request.getfixturevalue("monkeypatch")
    calls = native_fm_calls(monkeypatch)
    expected = fm_step(fm, numeric, table, dense, upstream)  # torch ops (native off)
    assert calls == []
    monkeypatch.setenv(native.ENV_SWITCH, "1")
    native.library.cache_clear()
    got = fm_step(fm, numeric, table, dense, upstream)
    assert calls == ["forward", "backward"]  # the C kernels ran
    for name, g, e in zip(("out", "fields", "sparse grad", "u grad", "vectors grad"), got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5, msg=name)


@needs_native
def test_native_fm_op_matches_the_torch_formula(monkeypatch):
    torch.manual_seed(1)
    fields = torch.randn(11, 6, 4, requires_grad=True)
    weight = torch.randn(6, 4, requires_grad=True)
    calls = native_fm_calls(monkeypatch)
    out, shared = fm(fields, weight)
    upstream = torch.randn(11, 6, 4)
    (out.sum() + (shared * upstream).sum()).backward()
    assert calls == ["forward", "backward"]  # the C kernels ran
    f, w = fields.detach().requires_grad_(True), weight.detach().requires_grad_(True)
    total = f.sum(1)
    plain = (f * w).sum((1, 2)) + 0.5 * (total.pow(2).sum(1) - f.pow(2).sum((1, 2)))
    (plain.sum() + (f * upstream).sum()).backward()
    torch.testing.assert_close(out, plain.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fields.grad, f.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weight.grad, w.grad, rtol=1e-5, atol=1e-5)


def fm_beside_an_added_branch(op):
    """An FM whose passed-through fields are added to another branch's tensor: the addition
    hands one gradient tensor to both inputs, and the branch's backward (made before the FM,
    so run after it) reads that tensor once the FM's backward has. Returns the sparse
    fields' gradient, the branch's and the upstream gradient of the sum."""
    torch.manual_seed(2)
    sparse, dense = torch.randn(5, 3, 4, requires_grad=True), torch.rand(5, 2)
    vectors, weight = torch.randn(2, 4), torch.randn(5, 4)
    branch_leaf = torch.randn(5, 5, 4, requires_grad=True)
    branch = branch_leaf * 2.0
    if op == "fm":
        out, shared = fm(torch.cat([sparse, dense.unsqueeze(-1) * vectors], 1), weight)
    else:
        out, shared = fm_fields(sparse, dense, vectors, weight)
    upstream = torch.randn(5, 5, 4)
    (out.sum() + ((shared + branch) * upstream).sum()).backward()
    return sparse.grad, branch_leaf.grad, upstream


@pytest.mark.parametrize("op", ["fm", "fm_fields"])
@pytest.mark.parametrize("switch", ["0", "1"])
def test_the_fm_never_writes_a_gradient_another_branch_reads(op, switch, monkeypatch):
    """The FM added its gradient into the incoming one in place: a branch handed the same
    tensor got the FM's gradient too."""
    monkeypatch.setenv(native.ENV_SWITCH, switch)
    native.library.cache_clear()
    if switch == "1" and native.library() is None:
        pytest.skip("no C compiler: native kernels are off")
    sparse_grad, branch_grad, upstream = fm_beside_an_added_branch(op)
    native.library.cache_clear()
    torch.testing.assert_close(branch_grad, 2.0 * upstream)
    assert sparse_grad.abs().sum() > 0


@needs_native
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_native_adagrad_rows_match_the_torch_update(mode, monkeypatch):
    gen = torch.Generator().manual_seed(2)
    rows, dim = 30, 8
    indices = torch.randint(0, rows, (40,), generator=gen)
    offsets = torch.tensor([0, 3, 3, 10, 22, 40])
    grad_out = torch.randn(5, dim, generator=gen)
    opt = FusedOptimizer("adagrad", lr=0.1)
    results = []
    calls = native_adagrad_calls(monkeypatch)
    for use_native in (True, False):
        weight = torch.randn(rows, dim, generator=torch.Generator().manual_seed(3))
        state = opt.init_state(weight)
        state["sum"].add_(0.5)
        lookup = Lookup(indices, offsets, None, mode, rows)
        (bag_native if use_native else reference).backward_update(grad_out, weight, state, lookup, opt)
        results.append((weight, state["sum"]))
    assert calls == ["rows"]  # the C kernel ran
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected)


def test_switched_off_there_is_no_library_and_the_fm_still_runs(native_off):
    assert native.library() is None
    fm, numeric = FactorizationMachine(3, 2), NumericEmbedding(1, 2)
    out, fields = fm.with_numeric(torch.randn(4, 2, 2), torch.rand(4, 1), numeric)
    assert out.shape == (4,) and fields.shape == (4, 3, 2)


def test_a_failed_build_warns_and_falls_back(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv(native.ENV_SWITCH, raising=False)  # switched on, as by default
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setenv("CTR_CACHE", str(tmp_path))
    native.library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="ctr.kernels.native"):
            assert native.library() is None
        assert "native CPU kernels are off" in caplog.text
        assert not list(tmp_path.rglob("*.so"))  # nothing half-written left in the cache
    finally:
        native.library.cache_clear()


def test_a_cache_that_is_a_file_is_named_as_the_build_falls_back(monkeypatch, tmp_path, caplog):
    """``$CTR_CACHE`` naming a file turned the kernels off with ``[Errno 20] Not a directory:
    '<file>/native/<hash>'``, naming neither the variable nor the file (the data cache's error names both)."""
    blocked = tmp_path / "cache"
    blocked.write_text("")
    monkeypatch.delenv(native.ENV_SWITCH, raising=False)
    monkeypatch.setenv("CC", "false")  # a compiler named (none runs): the cache is looked at on any machine
    monkeypatch.setenv("CTR_CACHE", str(blocked))
    native.library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="ctr.kernels.native"):
            assert native.library() is None
        said = f"ctr's native CPU kernels are off (torch ops instead): $CTR_CACHE: {blocked}: not a folder"
        assert caplog.messages == [said]
    finally:
        native.library.cache_clear()


@needs_native
@pytest.mark.parametrize("grouped", [False, True])
def test_native_single_id_update_equals_the_sorted_one_bit_for_bit(grouped, monkeypatch):
    """The counting-sort kernel (bags of one id) against the comparison-sort path: same rows
    summed in the same order, so identical tables; the gradient is read in place from a [B, F,
    D] view of a wider [B, F + 3, D] buffer or from a flat [N, D] one."""
    gen = torch.Generator().manual_seed(4)
    rows, dim, samples, fields = 200, 8, 40, 6
    indices = torch.randint(0, 60, (samples * fields,), generator=gen)  # many repeats; rows 60+ untouched
    offsets = torch.arange(samples * fields + 1)
    wide = torch.randn(samples, fields + 3, dim, generator=gen)
    grad_out = wide[:, :fields] if grouped else wide[:, :fields].reshape(-1, dim)
    opt = FusedOptimizer("adagrad", lr=0.1)
    results = []
    calls = native_adagrad_calls(monkeypatch)
    for single in (True, False):
        weight = torch.randn(rows, dim, generator=torch.Generator().manual_seed(5))
        state = opt.init_state(weight)
        bag_native.backward_update(grad_out, weight, state, Lookup(indices, offsets, None, "sum", rows, single), opt)
        results.append((weight, state["sum"]))
    assert calls == ["single", "rows"]  # the counting-sort kernel, then the sorted one
    (w_single, s_single), (w_sorted, s_sorted) = results
    assert torch.equal(w_single, w_sorted) and torch.equal(s_single, s_sorted)
    untouched = torch.ones(rows, dtype=torch.bool)
    untouched[indices] = False
    assert untouched.any() and (s_single[untouched] == 0).all()  # only the batch's rows moved


@needs_native
def test_native_single_id_update_rejects_a_row_outside_the_table():
    opt = FusedOptimizer("adagrad", lr=0.1)
    weight = torch.zeros(4, 2)
    lookup = Lookup(torch.tensor([1, 4]), torch.arange(3), None, "sum", 4, single=True)
    with pytest.raises(IndexError, match="adagrad_single"):
        bag_native.backward_update(torch.ones(2, 2), weight, opt.init_state(weight), lookup, opt)


@needs_native
@pytest.mark.parametrize("grouped", [False, True])
def test_native_single_id_row_gradients_match_a_torch_scatter(grouped):
    gen = torch.Generator().manual_seed(6)
    rows, dim, samples, fields = 200, 8, 40, 6
    indices = torch.randint(0, 60, (samples * fields,), generator=gen)
    wide = torch.randn(samples, fields + 3, dim, generator=gen)
    grad_out = wide[:, :fields] if grouped else wide[:, :fields].reshape(-1, dim)
    unique, sums = single_id_row_grads(grad_out, indices, rows)
    expected_rows = torch.unique(indices)
    dense = torch.zeros(rows, dim).index_add_(0, indices, wide[:, :fields].reshape(-1, dim))
    assert torch.equal(unique, expected_rows)
    torch.testing.assert_close(sums, dense[expected_rows])


@pytest.mark.parametrize("switch", ["0", "1"])
@pytest.mark.parametrize(
    "op, shapes, said",
    [
        ("fm", [(4, 3, 5), (2, 5)], "first-order vectors"),
        ("fm", [(4, 3, 5), (5, 3)], "first-order vectors"),  # as many floats, another layout
        ("fm", [(4, 15), (3, 5)], r"fields must be \[B, F, D\]"),
        ("fm_fields", [(4, 2, 5), (4, 1), (3, 5), (5, 5)], "numeric values"),  # [B, 1] broadcast in torch
        ("fm_fields", [(4, 2, 5), (3, 3), (3, 5), (5, 5)], "numeric values"),
        ("fm_fields", [(4, 2, 5), (4, 3), (3, 4), (5, 5)], "numeric vectors"),
        ("fm_fields", [(4, 2, 5), (4, 3), (3, 5), (2, 5)], "first-order vectors"),
    ],
)
def test_fm_shapes_that_do_not_fit_are_refused(op, shapes, said, switch, monkeypatch):
    """The C kernels read every tensor by the fields' sizes: a vector table of other sizes was
    read past its end (silent garbage) where torch raised or broadcast."""
    monkeypatch.setenv(native.ENV_SWITCH, switch)
    native.library.cache_clear()
    try:
        with pytest.raises(ValueError, match=said):
            (fm if op == "fm" else fm_fields)(*(torch.randn(*shape) for shape in shapes))
    finally:
        native.library.cache_clear()
