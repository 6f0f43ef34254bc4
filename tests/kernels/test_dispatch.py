"""Backend resolution, and every available backend run on the same embedding and compared.

Capability is resolved once (``resolve_backend``) with an explicit override; each backend
runs the same ``full`` embedding for one training step, unfused and fused, and the results
must agree with the torch path.
"""

import pytest
import torch

from ctr.embeddings.full import FullEmbedding
from ctr.kernels.embedding_bag import Backend, BackendUnavailable, FusedOptimizer, available, resolve_backend
from ctr.recipe import EmbeddingConfig, OptimizerConfig
from ctr.train.optim import RowWiseAdagrad
from tests.embeddings.test_full import batch, make_schema
from tests.kernels.conftest import HAS_FBGEMM, HAS_TRITON, INTERPRETING

BACKENDS = [Backend.TORCH] + [Backend.TRITON] * (HAS_TRITON and INTERPRETING) + [Backend.FBGEMM] * HAS_FBGEMM


def test_auto_is_torch_on_cpu_even_with_the_interpreter(monkeypatch):
    monkeypatch.delenv("CTR_KERNEL_BACKEND", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend(None, "cpu") is Backend.TORCH


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_environment_overrides_auto_and_explicit_overrides_environment(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("CTR_KERNEL_BACKEND", "triton")
    assert resolve_backend(None, "cpu") is Backend.TRITON
    assert resolve_backend("torch", "cpu") is Backend.TORCH


def test_fbgemm_is_cpu_only():
    reason = available(Backend.FBGEMM, torch.device("cuda"))
    assert reason is not None and ("CPU" in reason or "not installed" in reason)


def test_explicit_unavailable_backend_raises_at_lookup(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("CTR_KERNEL_BACKEND", raising=False)
    method = FullEmbedding(make_schema(), EmbeddingConfig(dim=4, backend="triton"))
    with pytest.raises(BackendUnavailable, match="'triton' requested but unavailable"):
        method(batch())


def one_step(backend: Backend, fused: bool, monkeypatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled output and the table after one row-wise Adagrad step, on ``backend``."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
    method = FullEmbedding(make_schema(), EmbeddingConfig(dim=4, backend=backend.value))
    assert method.backend() is backend
    opt = None
    if fused:
        method.use_fused_update(FusedOptimizer("rowwise_adagrad", lr=0.1))
    else:
        opt = RowWiseAdagrad(method.sparse_parameters(), OptimizerConfig(name="rowwise_adagrad", lr=0.1))
    out = method(batch())
    target = torch.arange(out.pooled.numel(), dtype=torch.float32).view_as(out.pooled)
    ((out.pooled - target) ** 2).sum().add(out.sequences["hist"].sum()).backward()
    if opt is not None:
        opt.step()
    return out.pooled.detach(), method.weight.detach().clone()


@pytest.mark.parametrize("fused", [False, True], ids=["sparse-grad", "fused"])
@pytest.mark.parametrize("backend", BACKENDS[1:], ids=lambda b: b.value)
def test_backends_agree_with_torch_on_a_training_step(backend, fused, monkeypatch):
    want_out, want_table = one_step(Backend.TORCH, fused, monkeypatch)
    got_out, got_table = one_step(backend, fused, monkeypatch)
    torch.testing.assert_close(got_out, want_out)
    torch.testing.assert_close(got_table, want_table)


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.value)
def test_fused_and_sparse_gradient_paths_agree(backend, monkeypatch):
    _, sparse_table = one_step(backend, False, monkeypatch)
    _, fused_table = one_step(backend, True, monkeypatch)
    torch.testing.assert_close(fused_table, sparse_table)
