import numpy as np
import pytest
import torch

from ctr.batch import JaggedFeatures
from ctr.embeddings.full import FullEmbedding
from ctr.embeddings.hashing import HashConfig, HashEmbedding
from ctr.recipe import EmbeddingConfig
from ctr.schema import FeatureInfo, FeatureSpec, Schema
from tests.embeddings.schemas import schema as shared_schema


def make_schema():
    features = [
        FeatureInfo(FeatureSpec(name="item", kind="categorical"), vocab_size=6, table="item"),
        FeatureInfo(FeatureSpec(name="user", kind="categorical"), vocab_size=4, table="user"),
        FeatureInfo(FeatureSpec(name="hist", kind="sequence", share_with="item", pooling="none"), vocab_size=6, table="item"),
        FeatureInfo(FeatureSpec(name="tags", kind="sequence", pooling="mean"), vocab_size=5, table="tags"),
    ]
    counts = {t: np.ones(n, dtype=np.int64) for t, n in (("item", 6), ("user", 4), ("tags", 5))}
    return Schema(features=features, label="y", counts=counts)


def batch():
    # B = 2; item, user single ids; hist lengths [2, 0]; tags lengths [1, 3]
    values = torch.tensor([2, 3, 1, 2, 4, 5, 2, 2, 3, 4])
    lengths = torch.tensor([1, 1, 1, 1, 2, 0, 1, 3])
    return JaggedFeatures.from_lengths(["item", "user", "hist", "tags"], values, lengths)


def test_layout_pooled_and_sequence_features():
    method = FullEmbedding(make_schema(), EmbeddingConfig(dim=4))
    out = method(batch())
    assert method.layout.pooled == ("item", "user", "tags")
    assert out.pooled.shape == (2, 3, 4)
    assert out.sequences["hist"].shape == (2, 2, 4)
    assert out.masks["hist"].tolist() == [[True, True], [False, False]]


def test_values_come_from_the_right_tables():
    method = FullEmbedding(make_schema(), EmbeddingConfig(dim=4))
    item, user, tags = (method.table_start[i].item() for i in range(3))
    w = method.weight.detach()
    out = method(batch())
    torch.testing.assert_close(out.pooled[0, 0], w[item + 2])
    torch.testing.assert_close(out.pooled[1, 1], w[user + 2])
    torch.testing.assert_close(out.sequences["hist"][0, 1], w[item + 5])  # shares item's table
    torch.testing.assert_close(out.sequences["hist"][1], torch.zeros(2, 4))
    torch.testing.assert_close(out.pooled[1, 2], (w[tags + 2] + w[tags + 3] + w[tags + 4]) / 3)


def test_memory_and_sparse_gradient():
    method = FullEmbedding(make_schema(), EmbeddingConfig(dim=4))
    assert method.memory_bytes() == method.full_bytes() == (6 + 4 + 5) * 4 * 4
    out = method(batch())
    (out.pooled.sum() + out.sequences["hist"].sum()).backward()
    assert method.weight.grad.is_sparse
    assert method.sparse_parameters() == [method.weight]


def test_wrong_keys_rejected():
    method = FullEmbedding(make_schema(), EmbeddingConfig(dim=4))
    jf = JaggedFeatures.from_dense(["user", "item"], torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="expected sparse keys"):
        method(jf)


@pytest.mark.parametrize("method", [FullEmbedding, HashEmbedding])
def test_single_id_batches_embed_alike_whether_flagged_or_checked(method):
    """A batch flagged ``single`` goes sample-major without checking its lengths (rows from the
    [B, F] grid of ids); vectors and gradients match the same batch built without the flag."""
    keys = ["item", "user"]
    full = shared_schema()
    single = Schema(features=[f for f in full.features if f.spec.name in keys], label="y", counts=full.counts)
    ids = torch.randint(2, 500, (16, 2), generator=torch.Generator().manual_seed(0))
    flagged = JaggedFeatures.from_dense(keys, ids)
    checked = JaggedFeatures(keys, flagged.values, flagged.offsets)
    assert flagged.single and not checked.single
    torch.manual_seed(1)
    embedding = method(single, HashConfig(dim=4, budget=0.5))  # full ignores the budget
    outputs = []
    for jf in (flagged, checked):
        embedding.zero_grad()
        pooled = embedding(jf).pooled
        pooled.square().sum().backward()
        outputs.append((pooled.detach(), embedding.weight.grad.to_dense()))
    torch.testing.assert_close(outputs[0][0], outputs[1][0])
    torch.testing.assert_close(outputs[0][1], outputs[1][1])


@pytest.mark.parametrize("native_kernels", ["1", "0"])
def test_single_id_sparse_gradient_is_coalesced_and_matches_the_dense_one(native_kernels, monkeypatch):
    """The sparse-gradient path of single-id batches (native counting sort, or torch's unique
    with CTR_NATIVE=0) gives one entry per distinct row, equal to the dense gradient."""
    from ctr.kernels import native

    monkeypatch.setenv(native.ENV_SWITCH, native_kernels)
    native.library.cache_clear()
    keys = ["item", "user"]
    full = shared_schema()
    single = Schema(features=[f for f in full.features if f.spec.name in keys], label="y", counts=full.counts)
    ids = torch.randint(2, 40, (32, 2), generator=torch.Generator().manual_seed(2))  # repeats
    embedding = FullEmbedding(single, EmbeddingConfig(dim=4))
    upstream = torch.randn(32, 2, 4)
    (embedding(JaggedFeatures.from_dense(keys, ids)).pooled * upstream).sum().backward()
    grad = embedding.weight.grad
    rows = embedding.rows_of(torch.arange(2), ids).reshape(-1)
    dense = torch.zeros_like(embedding.weight).index_add_(0, rows, upstream.reshape(-1, 4))
    assert grad.is_sparse and grad._nnz() == rows.unique().numel()  # one entry per distinct row
    torch.testing.assert_close(grad.to_dense(), dense)
    native.library.cache_clear()
