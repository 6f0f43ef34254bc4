"""``embedding.gradients: dense``: tables get dense gradients that torch's Adam steps, only
while they fit ``embedding.dense_max_mb``."""

import itertools

import pytest
import torch

from ctr.datasets import BatchLoader
from ctr.errors import RecipeError
from ctr.recipe import recipe_from_dict
from ctr.train.net import check_dense_size
from ctr.train.task import CTRTask
from tests.conftest import tiny_recipe

DENSE_ADAM = {"embedding_optimizer": {"name": "adam", "lr": 0.01}}


def task_for(tmp_path, prepared, embedding, train=DENSE_ADAM):
    recipe = recipe_from_dict(tiny_recipe(tmp_path, embedding=embedding, train=train))
    return CTRTask(recipe, prepared.schema)


def test_dense_gradient_tables_train_with_torch_adam(tmp_path, tiny_prepared):
    torch.manual_seed(0)
    task = task_for(tmp_path, tiny_prepared, {"gradients": "dense"})
    optimizer = task.configure_optimizers()
    table = task.net.embedding.weight
    adam = optimizer.parts["embedding"]
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["params"] == [table]
    before = table.detach().clone()
    batches = BatchLoader(tiny_prepared.split_dir("train"), tiny_prepared.schema, 256, prefetch=0)
    first, second = itertools.islice(iter(batches), 2)
    task.step(first, optimizer)
    assert not table.grad.is_sparse and table.grad.shape == table.shape
    after_first = table.detach().clone()
    moved = (after_first != before).any(1)
    task.step(second, optimizer)
    assert adam.state[table]["exp_avg"].shape == table.shape
    # dense Adam: rows the first batch moved and the second did not touch still move (momentum)
    coasting = moved & (table.grad == 0).all(1)
    assert coasting.any() and (table.detach()[coasting] != after_first[coasting]).all(1).any()


def test_sparse_gradients_stay_sparse_by_default(tmp_path, tiny_prepared):
    task = task_for(tmp_path, tiny_prepared, {}, train={})
    optimizer = task.configure_optimizers()
    batch = next(iter(BatchLoader(tiny_prepared.split_dir("train"), tiny_prepared.schema, 256, prefetch=0)))
    task.step(batch, optimizer)
    assert task.net.embedding.weight.grad.is_sparse


def test_tables_above_the_limit_are_refused_with_one_line_naming_the_key(tmp_path, tiny_prepared):
    with pytest.raises(RecipeError, match=r"^embedding\.gradients: dense gradients need tables of at most "
                                          r"embedding\.dense_max_mb = 0\.001 MB") as err:
        task_for(tmp_path, tiny_prepared, {"gradients": "dense", "dense_max_mb": 0.001})
    assert "\n" not in str(err.value)
    assert "these hold 0.0 MB" not in str(err.value)  # a table of a few kB was shown as 0.0 MB
    with pytest.raises(RecipeError, match=r"these hold 0\.0015 MB \("):
        check_dense_size(1500, 0.001)


@pytest.mark.parametrize("optimizer, instead", [
    ({"name": "sparse_adam"}, "use a torch optimizer of dense gradients (adam, adamw, adagrad, sgd), or gradients: sparse"),
    ({"name": "adagrad", "fused": True}, "use fused: false (a fused update steps the touched rows in the backward), or "
                                         "gradients: sparse"),  # it said to use adagrad, the one refused
])
def test_dense_gradients_refuse_sparse_only_optimizers(tmp_path, optimizer, instead):
    raw = tiny_recipe(tmp_path, embedding={"gradients": "dense"}, train={"embedding_optimizer": optimizer})
    with pytest.raises(RecipeError, match=r"^embedding\.gradients: dense gradients cannot be stepped") as err:
        recipe_from_dict(raw)
    assert str(err.value).endswith(instead)


def test_grad_clip_clips_the_dense_part_and_leaves_dense_table_gradients_as_they_are(tmp_path, tiny_prepared):
    """``train.grad_clip`` clips the model's gradients only (docs/recipes.md): a table's
    gradient, dense here, keeps its norm, as FuxiCTR's ``max_gradient_norm`` would not."""
    torch.manual_seed(0)
    task = task_for(tmp_path, tiny_prepared, {"gradients": "dense"}, train={**DENSE_ADAM, "grad_clip": 1e-6})
    optimizer = task.configure_optimizers()
    batch = next(iter(BatchLoader(tiny_prepared.split_dir("train"), tiny_prepared.schema, 256, prefetch=0)))
    task.step(batch, optimizer)
    dense = torch.cat([p.grad.flatten() for p in task._dense_parameters() if p.grad is not None])
    assert dense.norm() == pytest.approx(1e-6, rel=1e-3)
    assert task.net.embedding.weight.grad.norm() > 1e-4
