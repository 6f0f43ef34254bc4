"""Every embedding method's gradients are the same, bit for bit, on each backward of the same
batch with several CPU threads: what makes a run reproducible on the CPU with its seed, and a
resumed bi-level search (DNIS, AutoSrh, AutoDim) continue exactly. A parameter gathered by
advanced indexing (``alpha[rows]``) breaks it: its backward adds into the parameter with
atomics on several threads, in no fixed order."""

import pytest
import torch

from ctr.registry import EMBEDDINGS
from tests.embeddings.schemas import batch, schema
from tests.embeddings.test_compression_methods import SMOKE

OPTIONS = {**SMOKE, "hash": {"budget": 0.5}, "unified": {"budget": 0.5, "probes": 2}, "dnis": {"budget": 0.3},
           "optembed": {"budget": 0.5}, "full": {}}


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def weighted(tensor: torch.Tensor) -> torch.Tensor:
    """Σ tensor ⊙ w, with w fixed for the tensor's shape (drawn from seed 1)."""
    w = torch.randn(tensor.shape, generator=torch.Generator().manual_seed(1))
    return (tensor * w).sum()


def gradients(embedding, state, sparse) -> dict[str, torch.Tensor]:
    """Every parameter's gradient of a fixed weighting of the pooled and per-position
    embeddings plus the method's loss terms (the only gradient of MGQE's codebooks and DPQ's
    values) (sparse gradients made dense), and the state after the backward (integer rows
    update in place in it), from ``state``."""
    embedding.load_state_dict(state)  # buffers a forward changes (AutoDim's annealing step) as they were
    embedding.zero_grad(set_to_none=True)
    torch.manual_seed(2)  # the same noise where a method draws some (Gumbel-softmax, stochastic rounding)
    out = embedding(sparse)
    (weighted(out.pooled) + sum(weighted(s) for s in out.sequences.values()) + embedding.regularizer()).backward()
    grads = {name: p.grad.to_dense().clone() for name, p in embedding.named_parameters() if p.grad is not None}
    return {**grads, **{f"state {k}": v.clone() for k, v in embedding.state_dict().items()}}


@pytest.mark.parametrize("name", [entry.name for entry in EMBEDDINGS.entries()])
def test_gradients_are_bitwise_repeatable_on_several_threads(name, two_threads):
    entry = EMBEDDINGS.get(name)
    torch.manual_seed(0)
    embedding = entry.target(schema(), entry.config(dim=8, **OPTIONS[name]))  # D = 8, as OPTIONS (SMOKE) are sized for
    sparse = batch(size=8192)  # ~53k ids: above torch's grain size (32768 elements), so backwards run on both threads
    state = {k: v.clone() for k, v in embedding.state_dict().items()}
    first = gradients(embedding, state, sparse)
    assert any(not name.startswith("state ") or not torch.equal(v, state[name[6:]]) for name, v in first.items())
    for _ in range(3):
        again = gradients(embedding, state, sparse)
        assert [n for n, g in first.items() if not torch.equal(g, again[n])] == []
