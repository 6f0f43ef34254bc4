import numpy as np
import pytest
import torch

from ctr.batch import JaggedFeatures
from ctr.embeddings.base import EmbeddingMethod
from ctr.embeddings.budget import BudgetUnreachableError
from ctr.embeddings.full import FullEmbedding
from ctr.embeddings.hashing import HashConfig, HashEmbedding
from ctr.kernels import native
from ctr.embeddings import table
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


def test_a_budget_below_one_is_refused_not_ignored():
    """``-o embedding.budget=0.1`` on ``full`` trained the whole tables (1.0 × full) without a
    word; it is refused like int8's budget below its fixed ratio, naming the smallest budget."""
    with pytest.raises(BudgetUnreachableError, match=r"^embedding\.budget: 0\.1 is too small for full: it keeps every "
                                                      r"table whole .*; the smallest budget it reaches is 1$") as err:
        FullEmbedding(make_schema(), EmbeddingConfig(dim=4, budget=0.1))
    assert err.value.min_budget == 1.0
    assert FullEmbedding(make_schema(), EmbeddingConfig(dim=4, budget=1.0)).memory_bytes() == (6 + 4 + 5) * 4 * 4


def single_id_schema(vocabs: dict[str, int]) -> Schema:
    full = shared_schema({**vocabs, "tags": 5})
    return Schema(features=[f for f in full.features if f.spec.name in vocabs], label="y", counts=full.counts)


@pytest.mark.parametrize("method", [FullEmbedding, HashEmbedding])
def test_single_id_batches_skip_the_lengths_check_only_when_flagged(method, monkeypatch):
    """A batch flagged ``single`` goes sample-major without a pass over its lengths; the same
    batch unflagged is checked first. Both gather the rows ``rows_of`` maps the [B, F] grid to."""
    keys = ["item", "user"]
    ids = torch.randint(2, 500, (16, 2), generator=torch.Generator().manual_seed(0))
    flagged = JaggedFeatures.from_dense(keys, ids)
    checked = JaggedFeatures(keys, flagged.values, flagged.offsets)
    torch.manual_seed(1)
    config = HashConfig(dim=4, budget=0.5) if method is HashEmbedding else EmbeddingConfig(dim=4)
    embedding = method(single_id_schema({"item": 1000, "user": 600}), config)
    checks = []
    real_check = EmbeddingMethod._single_ids
    monkeypatch.setattr(EmbeddingMethod, "_single_ids", staticmethod(lambda jf: checks.append(jf) or real_check(jf)))
    expected = embedding.weight.detach()[embedding.rows_of(torch.arange(2), ids)]  # [16, 2, 4]
    for jf, checked_lengths in ((flagged, False), (checked, True)):
        checks.clear()
        torch.testing.assert_close(embedding(jf).pooled.detach(), expected)
        assert bool(checks) == checked_lengths


@pytest.mark.parametrize("native_kernels", ["1", "0"])
def test_single_id_sparse_gradient_has_one_entry_per_row_and_matches_the_dense_one(native_kernels, monkeypatch):
    """The sparse-gradient path of single-id batches: the native counting sort (a small table:
    at most 8 rows per id) or, with CTR_NATIVE=0, torch's unique; either gives one entry per
    distinct row, equal to the dense gradient."""
    monkeypatch.setenv(native.ENV_SWITCH, native_kernels)
    native.library.cache_clear()
    calls = []
    real = table.single_id_row_grads
    monkeypatch.setattr(table, "single_id_row_grads", lambda *args: calls.append(1) or real(*args))
    try:
        keys = ["item", "user"]
        ids = torch.randint(2, 12, (32, 2), generator=torch.Generator().manual_seed(2))  # repeats
        embedding = FullEmbedding(single_id_schema({"item": 20, "user": 12}), EmbeddingConfig(dim=4))
        upstream = torch.randn(32, 3, 4)  # the pooled fields' gradient arrives as a strided [32, 2, 4] slice
        pooled = embedding(JaggedFeatures.from_dense(keys, ids)).pooled
        (torch.cat([pooled, torch.zeros(32, 1, 4)], 1) * upstream).sum().backward()
        upstream = upstream[:, :2]
        grad = embedding.weight.grad
        rows = embedding.rows_of(torch.arange(2), ids).reshape(-1)
        dense = torch.zeros_like(embedding.weight).index_add_(0, rows, upstream.reshape(-1, 4))
        assert grad.is_sparse and grad._nnz() == rows.unique().numel()  # one entry per distinct row
        torch.testing.assert_close(grad.to_dense(), dense)
        assert bool(calls) == (native_kernels == "1" and native.library() is not None)
    finally:
        monkeypatch.undo()
        native.library.cache_clear()
