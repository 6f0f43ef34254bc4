import pytest
import torch

from ctr.embeddings.budget import ComputeLimitError
from ctr.embeddings.dhe import DeepHashEmbedding, DHEConfig, mlp_bytes
from ctr.embeddings.storage import SEED_BYTES
from tests.embeddings.schemas import batch, schema

BIG = {"item": 200000, "user": 100000, "tags": 1000}


def test_no_parameter_belongs_to_an_id():
    small = DeepHashEmbedding(schema(BIG), DHEConfig(dim=8, budget=0.02))
    doubled = {name: 2 * v for name, v in BIG.items()}
    large = DeepHashEmbedding(schema(doubled), DHEConfig(dim=8, budget=0.01))  # the same bytes
    shapes = [p.shape for p in small.parameters()]
    assert shapes == [p.shape for p in large.parameters()]
    assert all(max(shape) <= max(small.width, 1024) for shape in shapes)
    assert small.memory_bytes() == mlp_bytes(small.config, small.width) + SEED_BYTES * 1024
    assert small.memory_bytes() <= 0.02 * small.full_bytes() < mlp_bytes(small.config, small.width + 1) + SEED_BYTES * 1024


def test_same_id_same_encoding_and_codes_are_uniform_on_minus_one_one():
    method = DeepHashEmbedding(schema(BIG), DHEConfig(dim=8, budget=0.01))
    ids = torch.arange(2, 5000)
    item = method.encode(torch.zeros_like(ids), ids)
    assert item.shape == (ids.numel(), 1024)
    assert torch.equal(item, method.encode(torch.zeros_like(ids), ids))
    assert torch.equal(item, method.encode(torch.full_like(ids, 2), ids))  # hist shares item's table
    assert not torch.equal(item, method.encode(torch.ones_like(ids), ids))  # user: other global rows
    assert item.min() >= -1 and item.max() <= 1 and abs(float(item.mean())) < 0.01
    method.eval()
    torch.testing.assert_close(method.embed_ids(torch.zeros(2, dtype=torch.long), torch.tensor([7, 7])).diff(dim=0),
                               torch.zeros(1, 8))


def test_the_decoder_is_the_artifacts_mlp_and_trains():
    method = DeepHashEmbedding(schema(BIG), DHEConfig(dim=8, budget=0.01))
    kinds = [type(layer).__name__ for layer in method.decoder]
    assert kinds == ["Linear", "BatchNorm1d", "Mish"] * 5 + ["Linear"]
    out = method(batch(vocabs=BIG))
    out.pooled.sum().backward()
    assert method.decoder[0].weight.grad.abs().sum() > 0


def test_distinct_ids_are_encoded_once_with_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    method = DeepHashEmbedding(schema(BIG), DHEConfig(dim=8, budget=0.01))
    ids = torch.tensor([5, 7, 5, 5, 9, 7, 1, 5])
    features = torch.tensor([0, 0, 0, 2, 1, 1, 0, 0])  # feature 2 shares feature 0's table
    grads = []
    for embed in (method.embed_ids, lambda f, i: method.decoder(method.encode(f, i))):
        method.zero_grad()
        out = embed(features, ids)
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        grads.append((out.detach(), method.decoder[0].weight.grad.clone(), method.decoder[3].weight.grad.clone()))
    for once, every in zip(*grads):  # only the sums' order differs: float32 error scales with the largest entry
        torch.testing.assert_close(once, every, rtol=1e-4, atol=1e-4 * every.abs().max().item())


def test_a_budget_past_the_compute_limit_is_refused_with_an_estimate():
    with pytest.raises(ComputeLimitError, match=r"MLP width \d+ > 64.*GFLOP forward per 4096 ids"):
        DeepHashEmbedding(schema(BIG), DHEConfig(dim=8, budget=0.5, max_width=64))
