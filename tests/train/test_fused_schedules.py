"""The fused embedding update follows the lr schedule: step by step it moves the tables as the
unfused optimizer under the same schedule does (and not as a fixed lr), its lr is logged per
epoch, and a resumed run continues the schedule and the fused state."""

import csv
import itertools
import math

import pytest
import torch

from ctr.datasets import BatchLoader
from ctr.recipe import recipe_from_dict
from ctr.train.optim import FusedLR
from ctr.train.runner import train
from ctr.train.task import CTRTask
from tests.conftest import begun_with, tiny_recipe

EPOCHS, STEPS_PER_EPOCH = 4, 2
SCHEDULES = {
    "cosine": {"name": "cosine"},
    "step": {"name": "step", "factor": 0.5},
    "linear_warmup": {"name": "linear_warmup", "warmup_steps": 3, "decay": "linear", "decay_steps": 4},
    "plateau": {"name": "plateau", "min_delta": 1.0},  # AUC never gains 1: every validation after the first cuts
}


def task_for(tmp_path, prepared, rule, fused, scheduler):
    train_block = {"epochs": EPOCHS, "early_stop": None, "scheduler": scheduler,
                   "embedding_optimizer": {"name": rule, "lr": 0.05, "fused": fused}}
    torch.manual_seed(0)
    return CTRTask(recipe_from_dict(tiny_recipe(tmp_path, train=train_block)), prepared.schema)


def trajectory(task, batches):
    """The table [R, D] after every step of EPOCHS epochs over ``batches`` (a validation
    without gain after each epoch), and the embedding lr of each step."""
    optimizer = task.configure_optimizers()
    tables, lrs = [], []
    for epoch, step in itertools.product(range(EPOCHS), range(STEPS_PER_EPOCH)):
        global_step = epoch * STEPS_PER_EPOCH + step
        task.schedules.before_step(epoch, global_step)
        lrs.append(task.schedules.lrs()["embedding"])
        task.step(batches[step], optimizer)
        tables.append(task.net.embedding.weight.detach().clone())
        if step == STEPS_PER_EPOCH - 1:
            task.schedules.after_validation({"auc": 0.7, "logloss": 0.6})
    return tables, lrs


@pytest.fixture(scope="module")
def batches(tiny_prepared):
    loader = BatchLoader(tiny_prepared.split_dir("train"), tiny_prepared.schema, 256, prefetch=0)
    return list(itertools.islice(iter(loader), STEPS_PER_EPOCH))


# every schedule with the default fused rule, every other rule with the cosine schedule
CASES = [(s, "rowwise_adagrad") for s in SCHEDULES] + [("cosine", r) for r in ("sgd", "adagrad", "sparse_adam")]


@pytest.mark.parametrize("schedule, rule", CASES)
def test_fused_update_follows_the_schedule_step_by_step(tmp_path, tiny_prepared, batches, rule, schedule):
    fused = task_for(tmp_path, tiny_prepared, rule, True, SCHEDULES[schedule])
    got, lrs = trajectory(fused, batches)
    want, want_lrs = trajectory(task_for(tmp_path, tiny_prepared, rule, False, SCHEDULES[schedule]), batches)
    fixed, _ = trajectory(task_for(tmp_path, tiny_prepared, rule, True, None), batches)
    assert isinstance(fused.schedules.parts["embedding"], FusedLR)
    assert lrs == pytest.approx(want_lrs) and len(set(lrs)) > 1
    for step, (table, expected) in enumerate(zip(got, want)):
        torch.testing.assert_close(table, expected, rtol=1e-4, atol=1e-6, msg=f"step {step}")
    assert not torch.allclose(got[-1], fixed[-1], rtol=1e-4, atol=1e-6)


def logged_lrs(run):
    """``lr/embedding`` per epoch from the run's metrics.csv."""
    with open(run / "logs" / "metrics.csv") as f:
        return {int(row["epoch"]): float(row["lr/embedding"]) for row in csv.DictReader(f) if row.get("lr/embedding")}


def last_checkpoint(run):
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.mark.slow  # three short runs per schedule
@pytest.mark.parametrize(
    "scheduler, expected",
    [
        ({"name": "plateau", "min_delta": 1.0}, [0.05, 0.05, 5e-3, 5e-4]),
        ({"name": "step", "factor": 0.5}, [0.05, 0.025, 0.0125, 0.00625]),
        ({"name": "cosine"}, [0.05 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]),
        ({"name": "linear_warmup", "warmup_steps": 25}, [0.002, 0.022, 0.042, 0.05]),
    ],
)
def test_a_resumed_fused_run_continues_the_schedule(tmp_path, scheduler, expected):
    """Two epochs, then a resume to four: the fused lr of every epoch (metrics.csv) and the lr
    saved in last.ckpt are those of four epochs in one go, and the fused state went on from
    the checkpoint (row-wise Adagrad's sums only grow)."""
    def recipe(epochs):
        train_block = {"epochs": epochs, "early_stop": None, "scheduler": scheduler,
                       "embedding_optimizer": {"name": "rowwise_adagrad", "lr": 0.05, "fused": True}}
        return recipe_from_dict(tiny_recipe(tmp_path, train=train_block))

    train(recipe(4), tmp_path / "whole")
    train(recipe(2), tmp_path / "resumed")
    halfway = last_checkpoint(tmp_path / "resumed")["state_dict"]["net.embedding.fused_sum"]
    (tmp_path / "resumed" / "metrics.json").unlink()  # a finished run refuses --resume: continue it as unfinished
    begun_with(tmp_path / "resumed", recipe(4).to_dict())  # as if begun for four epochs
    train(recipe(4), tmp_path / "resumed", resume=True)
    whole, resumed = logged_lrs(tmp_path / "whole"), logged_lrs(tmp_path / "resumed")
    assert [whole[e] for e in range(4)] == pytest.approx(expected, rel=1e-6)
    assert [resumed[e] for e in (2, 3)] == pytest.approx(expected[2:], rel=1e-6)
    whole_ckpt, resumed_ckpt = last_checkpoint(tmp_path / "whole"), last_checkpoint(tmp_path / "resumed")
    lr = lambda ckpt: ckpt["optimizer_states"][0]["embedding"]["param_groups"][0]["lr"]  # noqa: E731
    assert lr(resumed_ckpt) == pytest.approx(lr(whole_ckpt), rel=1e-9)
    final = resumed_ckpt["state_dict"]["net.embedding.fused_sum"]
    assert (final >= halfway).all() and (final > halfway).any()
