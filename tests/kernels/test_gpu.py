"""Triton kernels on a CUDA device: bf16, DLRM-sized shapes, determinism, auto dispatch.

Skipped without CUDA, and under ``TRITON_INTERPRET=1`` (these need compiled kernels; the
interpreter cannot run bf16). Run on a GPU machine with ``python -m pytest tests/kernels -m gpu``.
"""

import pytest
import torch

from ctr.kernels.embedding_bag import Backend, FusedOptimizer, Rule, embedding_bag, fused_embedding_bag
from ctr.kernels.embedding_bag import reference, resolve_backend
from tests.kernels.conftest import bags, needs_compiled_triton, needs_cuda, needs_triton

pytestmark = [pytest.mark.gpu, needs_cuda, needs_triton, needs_compiled_triton]


def dlrm_batch(tables=26, rows=1000, batch=512, pooling=20, seed=0):
    """Table-batched ids of ``tables`` tables (rows already offset into one buffer)."""
    lengths = torch.randint(0, 2 * pooling + 1, (tables * batch,), generator=torch.Generator().manual_seed(seed))
    indices, offsets = bags(lengths.tolist(), rows, seed, device="cuda")
    table_of_bag = torch.arange(tables, device="cuda").repeat_interleave(batch)
    table_of_id = table_of_bag.repeat_interleave((offsets[1:] - offsets[:-1]))
    return indices + table_of_id * rows, offsets


def test_auto_dispatch_is_triton_on_cuda(monkeypatch):
    monkeypatch.delenv("CTR_KERNEL_BACKEND", raising=False)
    assert resolve_backend(None, "cuda") is Backend.TRITON


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_forward_matches_reference_on_dlrm_shapes(dtype, mode):
    indices, offsets = dlrm_batch()
    weight = torch.randn(26 * 1000, 128, device="cuda").to(dtype)
    got = embedding_bag(weight, indices, offsets, None, mode, backend=Backend.TRITON)
    want = reference.embedding_bag(weight, indices, offsets, None, mode)
    tol = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rule", list(Rule))
def test_fused_update_matches_reference_on_dlrm_shapes(dtype, rule):
    indices, offsets = dlrm_batch(batch=256)
    weight = torch.randn(26 * 1000, 64, device="cuda").to(dtype)
    opt = FusedOptimizer(rule, lr=0.01)
    grad_out = torch.randn(offsets.numel() - 1, 64, device="cuda")
    tables = []
    for backend in (Backend.TRITON, Backend.TORCH):
        table = weight.clone()
        out = fused_embedding_bag(table, opt.init_state(table), indices, offsets, None, "sum", opt, backend)
        (out.float() * grad_out).sum().backward()
        tables.append(table.float())
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(tables[0], tables[1], atol=tol, rtol=tol)


@pytest.mark.parametrize("rule", list(Rule))
def test_compiled_fused_update_uses_each_steps_lr(rule):
    """Scheduled lrs passed per step (0 included) reach the compiled kernel as the reference's."""
    indices, offsets = dlrm_batch(batch=128)
    weight = torch.randn(26 * 1000, 32, device="cuda")
    opt = FusedOptimizer(rule, lr=0.05)
    tables = []
    for backend in (Backend.TRITON, Backend.TORCH):
        table, state = weight.clone(), opt.init_state(weight)
        for step, lr in enumerate((0.3, 0.01, 0.0)):
            grad_out = torch.randn(offsets.numel() - 1, 32, device="cuda", generator=torch.Generator("cuda").manual_seed(step))
            out = fused_embedding_bag(table, state, indices, offsets, None, "sum", opt, backend, lr=lr)
            (out * grad_out).sum().backward()
        tables.append(table)
    torch.testing.assert_close(tables[0], tables[1], atol=1e-4, rtol=1e-4)


def test_fused_backward_is_deterministic_with_hot_rows():
    indices, offsets = dlrm_batch(rows=10, batch=2048)  # every row repeated thousands of times
    weight = torch.randn(26 * 10, 64, device="cuda")
    opt = FusedOptimizer("rowwise_adagrad", lr=0.01)
    grad_out = torch.randn(offsets.numel() - 1, 64, device="cuda")
    results = []
    for _ in range(3):
        table = weight.clone()
        out = fused_embedding_bag(table, opt.init_state(table), indices, offsets, None, "sum", opt, Backend.TRITON)
        (out * grad_out).sum().backward()
        results.append(table)
    assert torch.equal(results[0], results[1]) and torch.equal(results[1], results[2])


@pytest.mark.parametrize("per_table_sort", [False, True])
def test_fused_update_without_host_sync_matches_reference(per_table_sort):
    """Single-id DLRM batch: the sync-free backward (and its per-table sort) updates as the
    reference does, and queues without any host-device synchronisation."""
    tables, rows, batch, dim = 26, 1000, 4096, 64
    gen = torch.Generator().manual_seed(11)
    local = torch.randint(0, rows, (tables, batch), generator=gen)
    indices = (local + torch.arange(tables).unsqueeze(1) * rows).reshape(-1).cuda()
    offsets = torch.arange(indices.numel() + 1, device="cuda")
    grad = torch.randn(indices.numel(), dim, generator=gen).cuda()
    opt = FusedOptimizer(Rule.ROWWISE_ADAGRAD, lr=0.05)
    weights = {}
    for backend in (Backend.TORCH, Backend.TRITON):
        weight = torch.randn(tables * rows, dim, generator=torch.Generator().manual_seed(3)).cuda()
        state = opt.init_state(weight)
        segments = tables if per_table_sort and backend is Backend.TRITON else 1
        out = fused_embedding_bag(weight, state, indices, offsets, None, "sum", opt, backend, single=True,
                                  table_segments=segments)
        if backend is Backend.TRITON:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            out.backward(grad)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        weights[backend] = weight
    torch.testing.assert_close(weights[Backend.TRITON], weights[Backend.TORCH], rtol=1e-5, atol=1e-6)


def criteo_scale_check(device: str, rows: int, dim: int) -> None:
    """Rows far into a [rows, dim] table are read and updated where they are: int32 ids
    pooled in two bags, then one row-wise Adagrad step with a gradient of ones."""
    weight = torch.zeros(rows, dim, device=device)
    far, near = rows - 1, rows // 2 + 3
    weight[far], weight[near], weight[1] = 7.0, 5.0, 1.0
    ids = torch.tensor([far, near, 1, far], dtype=torch.int32, device=device)
    offsets = torch.tensor([0, 2, 4], device=device)
    assert embedding_bag(weight, ids, offsets, backend=Backend.TRITON).tolist() == [[12.0] * dim, [8.0] * dim]
    opt = FusedOptimizer(Rule.ROWWISE_ADAGRAD, lr=1.0)
    state = opt.init_state(weight)
    fused_embedding_bag(weight, state, ids, offsets, None, "sum", opt, Backend.TRITON).sum().backward()
    # far: g = 2, state 4, 7 - 2/2; near: g = 1, state 1, 5 - 1/1; row 1: 1 - 1/1
    torch.testing.assert_close(weight[[far, near]], torch.tensor([[6.0] * dim, [4.0] * dim], device=device))
    assert state["sum"][[far, near, 1]].tolist() == [4.0, 1.0, 1.0]
    assert int(weight.count_nonzero()) == 2 * dim and int(state["sum"].count_nonzero()) == 3


def test_rows_past_two_to_the_31_elements():
    """A Criteo-sized table of 33.5M rows × 64 (8.6 GB): its last rows lie past 2³¹ elements,
    where an int32 row × stride would wrap (the kernels compute offsets in int64)."""
    dim = 64
    criteo_scale_check("cuda", 2**31 // dim + 16, dim)
