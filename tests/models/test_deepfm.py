"""DeepFM: its FM part is exactly an FM over the shared field vectors, and it learns the
planted pairwise interactions of the synthetic data better than LR."""

import torch

from ctr.kernels.fm import fm
from ctr.models.layers import FactorizationMachine
from tests.models.helpers import first_batch, fit_batches, make_task, planted_batches, planted_schema, task_for_schema


def brute_force_pairs(fields):
    f = fields.shape[1]
    return sum((fields[:, i] * fields[:, j]).sum(-1) for i in range(f) for j in range(i + 1, f))


def test_fm_is_first_order_plus_the_sum_of_pairwise_dot_products():
    fm = FactorizationMachine(7, 4).double()
    with torch.no_grad():
        fm.field_weight.normal_()
        fm.bias.fill_(0.3)
    fields = torch.randn(5, 7, 4, dtype=torch.float64)
    assert torch.allclose(fm(fields), 0.3 + (fields * fm.field_weight).sum((1, 2)) + brute_force_pairs(fields))


def test_fm_single_pass_gradient_matches_autograd():
    fields = torch.randn(5, 7, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fm, (fields, weight))


def test_without_its_dnn_deepfm_is_an_fm_over_shared_embeddings(tiny_prepared):
    task = make_task(tiny_prepared, {"name": "deepfm", "hidden": [16], "dropout": 0.0})
    model = task.net.model
    torch.nn.init.zeros_(model.dnn.net[-1].weight)
    torch.nn.init.zeros_(model.dnn.net[-1].bias)
    with torch.no_grad():
        model.fm.field_weight.normal_()
        model.fm.bias.fill_(0.3)
    batch = first_batch(tiny_prepared, "test")
    task.eval()
    embedded = task.net.embedding(batch.sparse)
    # by hand: numeric fields are value × vector, then first order + all pairwise dot products
    fields = torch.cat([embedded.pooled, batch.dense.unsqueeze(-1) * model.numeric.vectors], 1)
    first = (fields * model.fm.field_weight).sum((1, 2)) + 0.3
    assert torch.allclose(model(batch, embedded), first + brute_force_pairs(fields), atol=1e-4)


def test_fm_and_dnn_both_train_the_shared_embeddings(tiny_prepared):
    task = make_task(tiny_prepared, {"name": "deepfm", "hidden": [16], "dropout": 0.0})
    model, batch = task.net.model, first_batch(tiny_prepared)
    for part in ("fm", "dnn"):
        task.zero_grad()
        embedded = task.net.embedding(batch.sparse)
        fields = torch.cat([embedded.pooled, model.numeric(batch.dense)], 1)
        out = model.fm(fields) if part == "fm" else model.dnn(fields.flatten(1))
        out.sum().backward()
        grad = task.net.embedding.weight.grad
        assert grad.is_sparse and grad.coalesce().values().abs().sum() > 0, part


def planted_fm(fields=8, vocab=20, k=4, seed=1):
    """Logits of a factorization machine over all field pairs (the interactions FM models)."""
    latent = torch.randn(fields, vocab + 2, k, generator=torch.Generator().manual_seed(seed))

    def logit(ids, dense):
        return brute_force_pairs(latent[torch.arange(fields), ids]) / k

    return logit


def test_deepfm_learns_pairwise_interactions_that_lr_cannot():
    schema = planted_schema(8, 20)
    train = planted_batches(schema, planted_fm(), 20000, 256, seed=1)
    test = planted_batches(schema, planted_fm(), 5000, 1024, seed=2)
    deepfm = fit_batches(task_for_schema(schema, {"name": "deepfm", "hidden": [32], "dropout": 0.0}), train, test, 3)
    lr = fit_batches(task_for_schema(schema, {"name": "lr"}), train, test, 3)
    assert deepfm > 0.8 and deepfm > lr + 0.15, (deepfm, lr)
