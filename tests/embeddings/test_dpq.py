import pytest
import torch

from ctr.embeddings.dpq import DPQConfig, DPQEmbedding
from ctr.errors import RecipeError
from ctr.recipe import recipe_from_dict
from tests.embeddings.schemas import schema

BIG = {"item": 20000, "user": 10000, "tags": 1000}


@pytest.mark.parametrize("mode", ["vq", "sx"])
def test_stored_bytes_are_codes_plus_the_value_codebook(mode):
    method = DPQEmbedding(schema(BIG), DPQConfig(dim=16, budget=0.5, mode=mode))
    assert (method.parts, method.choices) == (8, 32)  # the artifact's defaults fit
    assert method.memory_bytes() == 31000 * 8 + 32 * 16 * 4
    assert method.codes.dtype == torch.uint8


def test_parts_shrink_to_fit_the_budget():
    method = DPQEmbedding(schema(BIG), DPQConfig(dim=16, budget=0.1))
    assert method.parts == 4 and method.memory_bytes() <= 0.1 * method.full_bytes()


@pytest.mark.parametrize("dim, parts", [(12, 6), (4, 4), (10, 5)])
def test_the_default_parts_are_at_most_not_a_divisor_of_dim(dim, parts):
    """``parts`` is the most parts P of D: at a D that 8 does not divide the method takes the
    largest divisor below it (``embedding.parts: 8 must divide dim 12`` refused the default)."""
    config = recipe_from_dict({"embedding": {"method": "dpq", "dim": dim, "budget": 0.5}}).embedding
    method = DPQEmbedding(schema(BIG), config)
    assert method.parts == parts and method.memory_bytes() <= 0.5 * method.full_bytes()
    assert method.embed_ids(torch.zeros(3, dtype=torch.int64), torch.arange(2, 5)).shape == (3, dim)


def test_parts_below_one_are_a_one_line_recipe_error():
    with pytest.raises(RecipeError, match=r"^embedding\.parts: must be >= 1, got 0$"):
        recipe_from_dict({"embedding": {"method": "dpq", "budget": 0.5, "parts": 0}})


@pytest.mark.parametrize("mode", ["vq", "sx"])
def test_evaluation_decodes_the_codes_training_wrote(mode):
    torch.manual_seed(0)
    method = DPQEmbedding(schema(BIG), DPQConfig(dim=16, budget=0.5, mode=mode))
    ids = torch.arange(2, 300)
    trained = method.embed_ids(torch.zeros_like(ids), ids)
    reg = method.regularizer()
    (trained.sum() + reg).backward()
    assert method.query.grad.is_sparse and method.values.grad.abs().sum() > 0
    method.eval()
    with torch.no_grad():
        method.query.normal_()  # the query table is training state only
    decoded = method.embed_ids(torch.zeros_like(ids), ids)
    torch.testing.assert_close(decoded, trained.detach())
    assert len(method.codes[2:300].unique()) > 1


def test_vq_responses_are_negative_squared_distances_without_gradient():
    """The batched form equals −‖q − key‖² by broadcasting; the argmax needs no graph."""
    method = DPQEmbedding(schema(BIG), DPQConfig(dim=16, budget=0.5))
    query = torch.randn(50, method.parts, 16 // method.parts, requires_grad=True)
    keys = torch.randn(method.parts, method.choices, 16 // method.parts)
    expected = -(query.unsqueeze(2) - keys.unsqueeze(0)).pow(2).sum(-1)
    torch.testing.assert_close(DPQEmbedding.negative_distances(query, keys), expected, rtol=1e-5, atol=1e-5)
    assert not method.responses(query).requires_grad


def test_a_negative_commitment_is_a_one_line_recipe_error():
    """It was accepted, and trained the codebook away from the queries (mgqe refuses one)."""
    with pytest.raises(RecipeError, match=r"^embedding\.commitment: must be >= 0, got -1\.0$"):
        recipe_from_dict({"embedding": {"method": "dpq", "budget": 0.5, "commitment": -1.0}})


def test_a_zero_commitment_in_vq_mode_is_a_one_line_recipe_error():
    """vq's values learn only from the loss it weighs: at 0 they kept their initial draw, and
    every deployed row was made of untrained values. sx's values learn from the output."""
    with pytest.raises(RecipeError, match=r"^embedding\.commitment: must be > 0 in mode vq, got 0\.0 \(.*\)$"):
        recipe_from_dict({"embedding": {"method": "dpq", "budget": 0.5, "commitment": 0.0}})
    assert recipe_from_dict({"embedding": {"method": "dpq", "budget": 0.5, "mode": "sx", "commitment": 0.0}})


@pytest.mark.parametrize("mode", ["vq", "sx"])
def test_codes_are_the_best_raw_response_as_the_artifacts_per_part_normalisation_keeps_it(mode):
    """The artifact (Hetu, methods/layers/dpq.py) batch-normalises the [N, P, K] responses with
    cuDNN's spatial mode: one mean and std per part (axis 1) over the batch and the keys, a
    map that keeps every part's argmax. A per-key normalisation moved codes off the nearest key."""
    torch.manual_seed(0)
    method = DPQEmbedding(schema(BIG), DPQConfig(dim=16, budget=0.5, mode=mode))
    with torch.no_grad():
        method.query.normal_()
        scale = torch.linspace(0.1, 3.0, method.choices).view(1, -1, 1)  # keys of unequal norms
        method.values.normal_().mul_(scale)
        if mode == "sx":
            method.keys.normal_().mul_(scale)
    ids = torch.arange(0, 2000)
    method.embed_ids(torch.zeros_like(ids), ids)
    query = method.query.detach()[ids].view(-1, method.parts, 16 // method.parts)
    if mode == "vq":
        raw = DPQEmbedding.negative_distances(query, method.values.detach())
    else:
        raw = torch.einsum("npd,pkd->npk", query, method.keys.detach())
    assert torch.equal(method.codes[ids].long(), raw.argmax(-1))


def test_mixed_precision_training_chooses_the_nearest_keys_in_fp32():
    """Under bf16 autocast vq's distances were bf16 products whose cancellation picked
    farther keys (229 of 782 rows of a test batch at the start); they are computed in fp32."""
    torch.manual_seed(0)
    method = DPQEmbedding(schema(BIG), DPQConfig(dim=16, budget=0.5))
    ids = torch.arange(2, 3002)
    method.embed_ids(torch.zeros_like(ids), ids)
    exact = method.codes[ids].clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        method.embed_ids(torch.zeros_like(ids), ids)
    assert torch.equal(method.codes[ids], exact)
