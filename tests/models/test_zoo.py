"""Every registered model: builds from a recipe, maps a real pipeline batch to logits [B],
and learns planted pairwise interactions that logistic regression cannot."""

import pytest
import torch

from ctr.registry import MODELS
from tests.models.helpers import first_batch, fit_batches, make_task, planted_batches, planted_schema, task_for_schema

pytestmark = pytest.mark.slow  # end-to-end runs: `make test` runs them, `make test-fast` does not

SMALL = {
    "lr": {},
    "wdl": {"hidden": [32, 32]},
    "deepfm": {"hidden": [32], "dropout": 0.0},
    "dcn": {"hidden": [32], "cross_layers": 2},
    "dcnv2": {"hidden": [32], "cross_layers": 2},
    "dlrm": {"bottom_mlp": [16], "top_mlp": [32]},
    "autoint": {"layers": 2, "head_dim": 8},
    "autoint_plus": {"layers": 2, "head_dim": 8, "hidden": [32]},
}
EXPECTED = {"lr", "wdl", "deepfm", "dcn", "dcnv2", "dlrm", "autoint", "autoint_plus", "din"}


def test_every_model_of_the_issue_is_registered():
    assert EXPECTED <= set(MODELS.names())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_on_a_pipeline_batch(tiny_prepared, name):
    task = make_task(tiny_prepared, {"name": name, **SMALL[name]})
    batch = first_batch(tiny_prepared, size=32)
    logits, reg = task.net(batch)
    assert logits.shape == (32,) and torch.isfinite(logits).all() and reg.shape == ()


@pytest.fixture(scope="module")
def planted():
    """Data labelled by a factorization machine over 8 fields plus a numeric term."""
    schema = planted_schema(8, 20, dense=2)
    latent = torch.randn(8, 22, 4, generator=torch.Generator().manual_seed(1))

    def logit(ids, dense):
        v = latent[torch.arange(8), ids]
        return 0.5 * (v.sum(1).pow(2).sum(1) - v.pow(2).sum((1, 2))) / 4 + dense[:, 0]

    train, test = planted_batches(schema, logit, 20000, 256, 1), planted_batches(schema, logit, 5000, 1024, 2)
    lr = fit_batches(task_for_schema(schema, {"name": "lr"}), train, test, 3)
    return schema, train, test, lr


@pytest.mark.parametrize("name", sorted(set(SMALL) - {"lr"}))
def test_interaction_models_beat_lr_on_planted_interactions(planted, name):
    schema, train, test, lr = planted
    got = fit_batches(task_for_schema(schema, {"name": name, **SMALL[name]}), train, test, 3)
    assert got > lr + 0.04, (name, got, lr)


def test_autoint_plus_is_autoint_plus_a_dnn_logit(tiny_prepared):
    plus = make_task(tiny_prepared, {"name": "autoint_plus", **SMALL["autoint_plus"]}).net
    base = make_task(tiny_prepared, {"name": "autoint", **SMALL["autoint"]}).net
    base.load_state_dict({k: v for k, v in plus.state_dict().items() if not k.startswith("model.dnn")})
    batch = first_batch(tiny_prepared, size=16)
    plus.eval(), base.eval()
    embedded = plus.embedding(batch.sparse)
    fields = torch.cat([embedded.pooled, plus.model.numeric(batch.dense)], 1)
    dnn = plus.model.dnn(fields.flatten(1)).squeeze(-1)
    assert torch.allclose(plus(batch)[0], base(batch)[0] + dnn, atol=1e-5)


def test_dcnv2_mixture_needs_low_rank(tiny_prepared):
    from ctr.errors import RecipeError

    with pytest.raises(RecipeError, match=r"^model\.experts: 2 \(DCN-Mix\) needs model\.low_rank"):
        make_task(tiny_prepared, {"name": "dcnv2", "experts": 2})
