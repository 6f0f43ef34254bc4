import copy

import pytest
import torch

from ctr.embeddings.budget import ComputeLimitError
from ctr.embeddings.dhe import DeepHashEmbedding, DHEConfig, mlp_bytes
from ctr.embeddings.storage import SEED_BYTES
from ctr.schema import FeatureInfo, FeatureSpec, Schema
from tests.embeddings.schemas import batch, schema

BIG = {"item": 200000, "user": 100000, "tags": 1000}


def test_no_parameter_belongs_to_an_id():
    small = DeepHashEmbedding(schema(BIG), DHEConfig(dim=8, budget=0.02))
    doubled = {name: 2 * v for name, v in BIG.items()}
    large = DeepHashEmbedding(schema(doubled), DHEConfig(dim=8, budget=0.01))  # the same bytes
    shapes = [p.shape for p in small.parameters()]
    assert shapes == [p.shape for p in large.parameters()]
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


def test_distinct_ids_decoded_once_match_the_decoder_on_every_occurrence():
    torch.manual_seed(0)
    once = DeepHashEmbedding(schema(BIG), DHEConfig(dim=8, budget=0.01))
    every = copy.deepcopy(once)
    ids = torch.tensor([5, 7, 5, 5, 9, 7, 1, 5])
    features = torch.tensor([0, 0, 0, 2, 1, 1, 0, 0])  # feature 2 shares feature 0's table
    outs = []
    for method, embed in ((once, once.embed_ids), (every, lambda f, i: every.decoder(every.encode(f, i)))):
        out = embed(features, ids)
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
    assert torch.unique(once.encode(features, ids), dim=0).shape[0] == 5 < ids.numel()
    # float32 sums in another order: the error scales with the largest entry
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4 * outs[1].abs().max().item())
    scale = max(p.grad.abs().max().item() for p in every.parameters())  # biases before a norm: zero, up to noise
    for (name, mine), theirs in zip(once.decoder.named_parameters(), every.decoder.parameters()):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-4 * scale, msg=name)
    for (name, mine), theirs in zip(once.decoder.named_buffers(), every.decoder.buffers()):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5, msg=name)  # running mean, var, step count
    once.eval(), every.eval()
    torch.testing.assert_close(once.embed_ids(features, ids), every.decoder(every.encode(features, ids)),
                               rtol=1e-4, atol=1e-5)


def test_mixed_precision_keeps_the_statistics_in_float32():
    torch.manual_seed(0)
    method = DeepHashEmbedding(schema(BIG), DHEConfig(dim=8, budget=0.01))
    reference = copy.deepcopy(method)
    ids, features = torch.tensor([5, 7, 5, 5, 9, 7, 1, 5]), torch.zeros(8, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method.embed_ids(features, ids)
        expected = reference.decoder(reference.encode(features, ids))
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), rtol=0.05, atol=0.05 * expected.abs().max().item())
    for (name, mine), theirs in zip(method.decoder.named_buffers(), reference.decoder.buffers()):
        assert mine.dtype == theirs.dtype, name
        torch.testing.assert_close(mine, theirs, rtol=0.05, atol=0.01, msg=name)


def test_a_budget_past_the_compute_limit_is_refused_with_an_estimate():
    with pytest.raises(ComputeLimitError, match=r"MLP width \d+ > 64.*GFLOP forward per 4096 ids"):
        DeepHashEmbedding(schema(BIG), DHEConfig(dim=8, budget=0.5, max_width=64))


def test_a_second_lookup_of_the_rows_keeps_the_running_statistics():
    """DIN's l2_reg looks the step's distinct rows up again (``FeatureEmbeddings.rows``): that
    lookup updated the decoder's BatchNorm running statistics, which evaluation reads, with
    the distinct rows' distribution."""
    method = DeepHashEmbedding(schema(), DHEConfig(dim=8, budget=0.5, hashes=32)).train()
    out = method(batch(16))
    norms = [m for m in method.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    before = [copy.deepcopy(dict(m.named_buffers())) for m in norms]
    rows = out.rows(torch.tensor([0, 1, 0]), torch.tensor([5, 6, 7]))
    rows.pow(2).sum().backward()
    for norm, buffers in zip(norms, before):
        for name, value in buffers.items():
            assert torch.equal(getattr(norm, name), value), name
    assert all(p.grad is not None for p in method.decoder.parameters() if p.requires_grad)


def test_buckets_past_the_hash_prime_are_refused_naming_the_key():
    """Each hash is below p = 2³¹ − 1, so m > p mapped every code near −1 (m = 2⁴⁰: all in
    [−1, −0.996]) and the decoder saw nearly the same input for every id."""
    from ctr.errors import RecipeError
    from ctr.recipe import recipe_from_dict

    with pytest.raises(RecipeError, match=r"^embedding\.buckets: must be <= 2147483647, .*got 1099511627776$"):
        recipe_from_dict({"embedding": {"method": "dhe", "budget": 0.1, "buckets": 2**40}})
    method = DeepHashEmbedding(schema(BIG), DHEConfig(dim=8, budget=0.01, hashes=64, buckets=2**31 - 1))  # m = p
    codes = method.encode(torch.zeros(998, dtype=torch.long), torch.arange(2, 1000))
    assert codes.min() < -0.99 and codes.max() > 0.99


def test_initial_vectors_keep_an_fm_over_many_fields_near_zero():
    """Every id's vector carries the decoder's mean output (Mish after BatchNorm averages about
    0.24 per unit), so an FM's pairwise sum over F fields grows as F²/2 · |mean vector|². The
    output layer starts as the artifact's initializer draws it (weights uniform in
    ±√(1 / max_t V_t), zero bias); with torch's default (weights and bias ±1/√w) DeepFM on the
    synthetic dataset's 26 fields started at logits near 100 and a training loss over 200."""
    fields, rows, dim, size = 26, 2000, 16, 512
    names = [f"c{i}" for i in range(fields)]
    wide = Schema(features=[FeatureInfo(FeatureSpec(name=n), vocab_size=rows, table=n) for n in names], label="y",
                  counts={n: torch.full((rows,), 10).numpy() for n in names})
    torch.manual_seed(0)
    method = DeepHashEmbedding(wide, DHEConfig(dim=dim, budget=0.1))
    ids = torch.randint(2, rows, (size * fields,))
    vectors = method.embed_ids(torch.arange(fields).repeat(size), ids).view(size, fields, dim)
    pairwise = (vectors.sum(1).square() - vectors.square().sum(1)).sum(-1) / 2  # [B], the FM's second order
    assert pairwise.abs().mean() < 10  # torch's default initialisation: about 100
    output = method.decoder[-1]
    assert torch.count_nonzero(output.bias) == 0 and output.weight.abs().max() <= rows ** -0.5
