"""Fused optimizer rules against the unfused sparse-gradient optimizers, and the fbgemm backend.

The reference fused path (sort, segment reduction, update) must leave the table and state
exactly where torch's own sparse optimizer leaves them after the same steps: that is what
lets ``train.embedding_optimizer.fused`` switch on without changing the result.
"""

import pytest
import torch

from ctr.kernels.embedding_bag import (
    Backend, BackendUnavailable, FusedOptimizer, Rule, check_fused, embedding_bag, fused_embedding_bag,
)
from ctr.kernels.embedding_bag import reference
from ctr.kernels.optim import FUSABLE
from ctr.recipe import OptimizerConfig
from ctr.registry import OPTIMIZERS
from ctr.train.optim import RowWiseAdagrad
from tests.kernels.conftest import bags, needs_fbgemm, needs_interpreter

LR = 0.1
UNFUSED = {
    Rule.SGD: lambda p: torch.optim.SGD([p], lr=LR),
    Rule.ADAGRAD: lambda p: torch.optim.Adagrad([p], lr=LR),
    Rule.ROWWISE_ADAGRAD: lambda p: RowWiseAdagrad([p], OptimizerConfig(name="rowwise_adagrad", lr=LR)),
    Rule.ADAM: lambda p: torch.optim.SparseAdam([p], lr=LR),
}
STEPS = [([2, 0, 3, 1], 0), ([4, 4], 1), ([1, 0, 0, 6], 2)]  # (bag lengths, seed) per step


def run_unfused(rule, weight, mode, lrs=None):
    """The unfused optimizer over ``STEPS``; ``lrs``: each step's lr set in its param group first."""
    table = torch.nn.Parameter(weight.clone())
    opt = UNFUSED[rule](table)
    for step, (lengths, seed) in enumerate(STEPS):
        indices, offsets = bags(lengths, weight.shape[0], seed)
        grad_out = torch.randn(len(lengths), weight.shape[1], generator=torch.Generator().manual_seed(seed))
        if lrs is not None:
            opt.param_groups[0]["lr"] = lrs[step]
        opt.zero_grad()
        (reference.embedding_bag(table, indices, offsets, mode=mode) * grad_out).sum().backward()
        opt.step()
    return table.detach()


def run_fused(rule, weight, mode, backend=Backend.TORCH, lrs=None):
    """The fused update over ``STEPS``; ``lrs``: each step's lr passed to the lookup."""
    opt = FusedOptimizer(rule, lr=LR)
    table, state = weight.clone(), opt.init_state(weight)
    for step, (lengths, seed) in enumerate(STEPS):
        indices, offsets = bags(lengths, weight.shape[0], seed)
        grad_out = torch.randn(len(lengths), weight.shape[1], generator=torch.Generator().manual_seed(seed))
        lr = None if lrs is None else lrs[step]
        out = fused_embedding_bag(table, state, indices, offsets, None, mode, opt, backend, lr=lr)
        (out * grad_out).sum().backward()
    return table, state


@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("rule", list(Rule))
def test_fused_reference_equals_unfused_optimizer(rule, mode):
    weight = torch.randn(7, 4, generator=torch.Generator().manual_seed(9))
    fused, _ = run_fused(rule, weight, mode)
    torch.testing.assert_close(fused, run_unfused(rule, weight, mode))
    assert not torch.equal(fused, weight)


SCHEDULED = [0.3, 0.02, 0.0]  # one lr per step of STEPS (a schedule's; it may reach 0)


@pytest.mark.parametrize("backend", [
    Backend.TORCH,
    pytest.param(Backend.TRITON, marks=needs_interpreter),
    pytest.param(Backend.FBGEMM, marks=needs_fbgemm),
])
@pytest.mark.parametrize("rule", list(Rule))
def test_fused_update_uses_each_steps_lr(rule, backend):
    """Per-step lrs given to the lookup (torch reference, native C Adagrad, Triton, fbgemm)
    move the table as the unfused optimizer whose param group holds the same lrs, and not as
    the fixed base lr does."""
    if backend is Backend.FBGEMM and rule is Rule.ADAM:
        pytest.skip("fbgemm has no fused sparse_adam")
    weight = torch.randn(7, 4, generator=torch.Generator().manual_seed(9))
    scheduled, _ = run_fused(rule, weight, "sum", backend, lrs=SCHEDULED)
    torch.testing.assert_close(scheduled, run_unfused(rule, weight, "sum", lrs=SCHEDULED))
    assert not torch.allclose(scheduled, run_fused(rule, weight, "sum", backend)[0])


@pytest.mark.parametrize("rule", list(Rule))
def test_grouped_output_reads_a_strided_gradient_as_the_flat_output_does(rule):
    """``groups``: the [F, B, D] output transposed and concatenated downstream updates the
    table exactly as the flat output whose gradient was copied into bag order."""
    features, batch, dim, rows = 3, 6, 4, 10
    weight = torch.randn(rows, dim, generator=torch.Generator().manual_seed(1))
    indices = torch.randint(0, rows, (features * batch,), generator=torch.Generator().manual_seed(2))
    offsets = torch.arange(features * batch + 1)
    upstream = torch.randn(batch, features + 2, dim, generator=torch.Generator().manual_seed(3))
    other = torch.zeros(batch, 2, dim)
    opt, tables = FusedOptimizer(rule, lr=LR), []
    for groups in (1, features):
        table, state = weight.clone(), opt.init_state(weight)
        out = fused_embedding_bag(table, state, indices, offsets, None, "sum", opt, groups=groups)
        pooled = out.view(features, batch, dim).transpose(0, 1)  # a view of a view when grouped
        (torch.cat([pooled, other], 1) * upstream).sum().backward()
        tables.append(table)
    torch.testing.assert_close(tables[1], tables[0])
    assert not torch.equal(tables[1], weight)


def test_every_fusable_rule_is_a_registered_sparse_optimizer():
    assert FUSABLE == tuple(r.value for r in Rule)
    assert all(name in OPTIMIZERS for name in FUSABLE)


def test_rowwise_state_is_one_value_per_row_and_untouched_rows_keep_zero():
    weight = torch.randn(7, 4)
    _, state = run_fused(Rule.ROWWISE_ADAGRAD, weight, "sum")
    touched = torch.zeros(7, dtype=torch.bool)
    for lengths, seed in STEPS:
        touched[bags(lengths, 7, seed)[0]] = True
    assert state["sum"].shape == (7,)
    assert (state["sum"][touched] > 0).all() and (state["sum"][~touched] == 0).all()


def test_rowwise_adagrad_is_fbgemms_rule_by_hand():
    """s_r += mean_d g_rd², w_r -= lr·g_r / (√s_r + eps), worked out by hand on two steps: the
    fused reference and the unfused RowWiseAdagrad share this code, so comparing them cannot
    catch an error in the rule itself (a dropped root, a sum for the mean)."""
    opt = FusedOptimizer("rowwise_adagrad", lr=0.5, eps=0.0)
    weight = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    state = opt.init_state(weight)
    reference.apply_rows(weight, state, torch.tensor([2, 0]), torch.tensor([[3.0, 4.0], [1.0, 1.0]]), opt, opt.lr)
    assert state["sum"].tolist() == [1.0, 0.0, 12.5]  # (1 + 1) / 2, untouched, (9 + 16) / 2
    step = 0.5 / 12.5 ** 0.5
    assert torch.allclose(weight, torch.tensor([[0.5, 1.5], [3.0, 4.0], [5.0 - 3 * step, 6.0 - 4 * step]]))
    reference.apply_rows(weight, state, torch.tensor([0]), torch.tensor([[2.0, 0.0]]), opt, opt.lr)
    assert state["sum"][0] == 3.0 and torch.allclose(weight[0], torch.tensor([0.5 - 1.0 / 3.0 ** 0.5, 1.5]))


def test_adam_counts_steps_and_fused_buffer_gets_no_gradient():
    weight = torch.randn(7, 4)
    table, state = run_fused(Rule.ADAM, weight, "sum")
    assert int(state["step"]) == len(STEPS)
    assert not table.requires_grad and table.grad is None


def test_per_sample_weight_gradient_in_fused_mode():
    weight = torch.randn(6, 3)
    indices, offsets = bags([2, 3], 6, 4)
    psw = torch.rand(indices.numel(), requires_grad=True)
    opt = FusedOptimizer("sgd", lr=LR)
    out = fused_embedding_bag(weight.clone(), opt.init_state(weight), indices, offsets, psw, "sum", opt)
    out.sum().backward()
    ref_psw = psw.detach().clone().requires_grad_()
    reference.embedding_bag(weight, indices, offsets, ref_psw).sum().backward()
    torch.testing.assert_close(psw.grad, ref_psw.grad)


def test_bad_rule_and_lr():
    with pytest.raises(ValueError, match="no fused optimizer 'adam'"):
        FusedOptimizer("adam", lr=0.1)
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got 0.0"):
        FusedOptimizer("sgd", lr=0.0)


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), -1.0])
def test_a_learning_rate_that_is_not_a_finite_positive_number_is_refused(lr):
    with pytest.raises(ValueError, match=rf"^Invalid learning rate: fused optimizer lr must be a finite number > 0, got {lr}$"):
        FusedOptimizer("rowwise_adagrad", lr=lr)
    opt = FusedOptimizer("sparse_adam", lr=0.1)
    with pytest.raises(ValueError, match=rf"^Invalid learning rate: fused optimizer step lr must be a finite number >= 0, got {lr}$"):
        opt.begin_step(opt.init_state(torch.zeros(2, 2)), lr)


@pytest.mark.parametrize("settings, message", [
    ({"eps": float("nan")}, "Invalid epsilon value: fused optimizer eps must be a finite number >= 0, got nan"),
    ({"eps": -1.0}, "Invalid epsilon value: fused optimizer eps must be a finite number >= 0, got -1.0"),
    ({"betas": (0.9, 1.0)}, r"Invalid beta parameter: fused optimizer betas must be in \[0, 1\), got \(0.9, 1.0\)"),
])
def test_bad_eps_and_betas_are_refused(settings, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        FusedOptimizer("sparse_adam", lr=0.1, **settings)


@needs_fbgemm
@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("rule", [Rule.SGD, Rule.ADAGRAD, Rule.ROWWISE_ADAGRAD])
def test_fbgemm_fused_update_matches_reference(rule, mode):
    weight = torch.randn(7, 4, generator=torch.Generator().manual_seed(3))
    got, got_state = run_fused(rule, weight, mode, Backend.FBGEMM)
    want, want_state = run_fused(rule, weight, mode, Backend.TORCH)
    torch.testing.assert_close(got, want)
    for name in want_state:
        torch.testing.assert_close(got_state[name], want_state[name])


@needs_fbgemm
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fbgemm_forward_and_sparse_gradient_match_reference(dtype):
    weight = torch.randn(9, 5).to(dtype)
    indices, offsets = bags([3, 0, 4, 1], 9, 5)
    psw = torch.rand(indices.numel())
    for p, mode in ((None, "sum"), (psw, "sum"), (None, "mean")):
        got = embedding_bag(weight, indices, offsets, p, mode, backend=Backend.FBGEMM)
        want = reference.embedding_bag(weight, indices, offsets, p, mode)
        assert got.dtype == dtype
        torch.testing.assert_close(got, want, atol=2e-3 if dtype == torch.float16 else 1e-5, rtol=1e-3)
    table = weight.float().requires_grad_()
    (embedding_bag(table, indices, offsets, backend=Backend.FBGEMM) * torch.arange(4.0).unsqueeze(1)).sum().backward()
    ref = weight.float().requires_grad_()
    (reference.embedding_bag(ref, indices, offsets) * torch.arange(4.0).unsqueeze(1)).sum().backward()
    torch.testing.assert_close(table.grad.to_dense(), ref.grad.to_dense())


@needs_fbgemm
def test_fbgemm_refuses_what_it_cannot_do():
    with pytest.raises(BackendUnavailable, match="fused sparse_adam"):
        check_fused("fbgemm", FusedOptimizer("sparse_adam", lr=LR))
    with pytest.raises(BackendUnavailable, match="bfloat16"):
        embedding_bag(torch.randn(4, 2).bfloat16(), torch.tensor([1]), torch.tensor([0, 1]), backend=Backend.FBGEMM)


@needs_fbgemm
@pytest.mark.parametrize("indices, offsets, psw, said", [
    ([0, 1], [0, 3], None, "end at 2"),  # FBGEMM read an id past the ids' buffer
    ([0, 1, 2], [0, 2, 1, 3], None, "never decrease"),  # it pooled uninitialised memory
    ([0, 1, 2], [0, 3], [1.0, 1.0], r"per_sample_weights: \(2,\) for ids \(3,\)"),  # it read past the weights
    ([0.0, 1.7], [0, 2], None, "must be integer tensors"),  # it truncated 1.7 to row 1
])
def test_fbgemm_refuses_ids_and_offsets_outside_the_buffers(indices, offsets, psw, said):
    weight = torch.randn(4, 4)
    weights = None if psw is None else torch.tensor(psw)
    with pytest.raises((RuntimeError, ValueError), match=said):
        embedding_bag(weight, torch.tensor(indices), torch.tensor(offsets), weights, backend=Backend.FBGEMM)


@pytest.mark.parametrize("backend", [Backend.TORCH, pytest.param(Backend.TRITON, marks=needs_interpreter)])
@pytest.mark.parametrize("offsets", [[0, 3], [0, 0, 2, 3]])
def test_single_is_refused_for_bags_of_other_lengths(offsets, backend):
    """``single`` skips the bags' lengths: the backward read bag i's gradient for id i, past
    the [num_bags, D] gradient (the C Adagrad and the Triton kernel read beyond it)."""
    opt = FusedOptimizer("adagrad", lr=LR)
    weight = torch.zeros(6, 4)
    with pytest.raises((ValueError, RuntimeError), match="single: every bag must hold one id"):
        out = fused_embedding_bag(weight, opt.init_state(weight), torch.tensor([1, 2, 3]), torch.tensor(offsets),
                                  None, "sum", opt, backend, single=True)
        out.sum().backward()


def test_a_caller_whose_offsets_are_single_by_construction_skips_their_check(monkeypatch):
    """The check's kernels (a diff, a compare, an all, an assert) ran on every fused step of
    ctr's own grid lookup, whose offsets are a cached arange; ``check_offsets=False`` skips
    them, and an external caller keeps them (the test above)."""
    def refused(indices, offsets):
        raise AssertionError("checked")

    monkeypatch.setattr(reference, "check_single", refused)
    opt = FusedOptimizer("adagrad", lr=LR)
    weight = torch.zeros(6, 4)
    indices, offsets = torch.tensor([1, 2, 3]), torch.arange(4)
    out = fused_embedding_bag(weight, opt.init_state(weight), indices, offsets, None, "sum", opt, single=True,
                              check_offsets=False)
    out.sum().backward()
    assert weight[1:4].ne(0).all() and weight[[0, 4, 5]].eq(0).all()
    with pytest.raises(AssertionError, match="checked"):
        fused_embedding_bag(weight, opt.init_state(weight), indices, offsets, None, "sum", opt, single=True)
