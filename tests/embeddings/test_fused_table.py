"""Fused update of a table method: buffer instead of parameter, state in the state dict,
same result as the unfused optimizer, and a checkpoint that resumes the same trajectory."""

import pytest
import torch

from ctr.embeddings.base import EmbeddingMethod
from ctr.embeddings.full import FullEmbedding
from ctr.errors import RecipeError
from ctr.kernels.embedding_bag import FusedOptimizer, Rule
from ctr.recipe import EmbeddingConfig, OptimizerConfig
from ctr.registry import OPTIMIZERS
from tests.embeddings.test_full import batch, make_schema


def make(rule=None, seed=0):
    torch.manual_seed(seed)
    method = FullEmbedding(make_schema(), EmbeddingConfig(dim=4))
    if rule is not None:
        method.use_fused_update(FusedOptimizer(rule, lr=0.1))
    return method


def step(method, optimizer=None, scale=1.0):
    out = method(batch())
    loss = (out.pooled * scale).pow(2).sum() + out.sequences["hist"].sum() * scale
    loss.backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad()


def test_fused_table_is_a_buffer_with_its_state():
    method = make(Rule.ROWWISE_ADAGRAD)
    assert "weight" not in dict(method.named_parameters())
    assert method.sparse_parameters() == []
    assert {"weight", "fused_sum"} <= set(method.state_dict())
    assert method.fused_sum.shape == (method.weight.shape[0],)


@pytest.mark.parametrize("rule", list(Rule))
def test_fused_step_equals_unfused_optimizer_step(rule):
    fused = make(rule)
    unfused = make()
    optimizer = OPTIMIZERS.get(rule.value).target(unfused.sparse_parameters(), OptimizerConfig(name=rule.value, lr=0.1))
    for scale in (1.0, 0.5):
        step(fused, scale=scale)
        step(unfused, optimizer, scale=scale)
    torch.testing.assert_close(fused.weight, unfused.weight.detach())


def test_state_dict_resumes_the_same_trajectory():
    original = make(Rule.ADAM)
    step(original)
    checkpoint = {k: v.clone() for k, v in original.state_dict().items()}
    resumed = make(Rule.ADAM, seed=1)
    resumed.load_state_dict(checkpoint)
    assert int(resumed.fused_step) == 1
    step(original, scale=0.5)
    step(resumed, scale=0.5)
    for name, tensor in original.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor)


def test_eval_mode_looks_up_without_updating():
    method = make(Rule.SGD)
    before = method.weight.clone()
    method.eval()
    out = method(batch())
    assert not out.pooled.requires_grad
    assert torch.equal(method.weight, before)


def test_method_without_a_table_refuses_fused_update():
    class NoTable(EmbeddingMethod):
        def embed_ids(self, feature, ids):
            return torch.zeros(ids.numel(), self.dim)

    method = NoTable(make_schema(), EmbeddingConfig(dim=4))
    with pytest.raises(RecipeError, match="train.embedding_optimizer.fused"):
        method.use_fused_update(FusedOptimizer("sgd", lr=0.1))


def test_a_fused_grid_lookup_does_not_check_its_own_offsets(monkeypatch):
    """A grid's offsets are the table's cached ``0, 1, ..., N``: the fused kernel's check of
    single bags' offsets (a few kernel launches per step on a GPU) is skipped for them."""
    from ctr.embeddings.bags import IdGrid
    from ctr.kernels.embedding_bag import reference

    def refused(indices, offsets):
        raise AssertionError("checked")

    monkeypatch.setattr(reference, "check_single", refused)
    method = make(Rule.ADAGRAD)
    before = method.weight.clone()
    method.embed_grid(IdGrid(torch.tensor([[2, 1], [3, 0]]), torch.tensor([0, 1]))).sum().backward()
    assert not torch.equal(method.weight, before)
