"""Learning-rate schedules: each changes the optimizers' param groups as specified, the lr is
logged per epoch, and a resumed run continues the schedule where it stopped."""

import csv
import math

import pytest
import torch

from ctr.errors import RecipeError
from ctr.recipe import recipe_from_dict
from ctr.train.runner import train
from ctr.train.schedule import Schedules
from tests.conftest import begun_with, tiny_recipe

BASE = {"dense": 1e-3, "embedding": 0.05}


def schedules(scheduler, embedding_scheduler=None, epochs=4, early_stop=None):
    """Schedules over two one-parameter optimizers with the base lrs of ``BASE``."""
    train = {"epochs": epochs, "scheduler": scheduler, "early_stop": early_stop}
    if embedding_scheduler:
        train["embedding_scheduler"] = embedding_scheduler
    recipe = recipe_from_dict({"train": train})
    parts = {name: torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr) for name, lr in BASE.items()}
    return Schedules(parts, recipe.train), parts


def lrs(parts):
    return {name: opt.param_groups[0]["lr"] for name, opt in parts.items()}


def test_cosine_falls_per_epoch_to_min_lr():
    sched, parts = schedules({"name": "cosine", "min_lr": 1e-5})
    for epoch in range(6):
        sched.before_step(epoch, step=epoch * 10)
        fraction = (1 + math.cos(math.pi * min(epoch / 4, 1))) / 2
        for name, base in BASE.items():
            assert lrs(parts)[name] == pytest.approx(1e-5 + (base - 1e-5) * fraction)


def test_step_multiplies_every_step_epochs():
    sched, parts = schedules({"name": "step", "step_epochs": 2, "factor": 0.5})
    got = []
    for epoch in range(5):
        sched.before_step(epoch, step=0)
        got.append(lrs(parts)["dense"])
    assert got == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4])


def test_linear_warmup_then_linear_decay_per_step():
    sched, parts = schedules({"name": "linear_warmup", "warmup_steps": 4, "decay": "linear", "decay_steps": 4,
                              "min_lr": 1e-4})
    got = []
    for step in range(10):
        sched.before_step(epoch=0, step=step)
        got.append(lrs(parts)["dense"])
    expected = [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 7.75e-4, 5.5e-4, 3.25e-4, 1e-4, 1e-4]
    assert got == pytest.approx(expected)


def test_plateau_divides_by_ten_after_a_validation_without_gain():
    sched, parts = schedules({"name": "plateau"}, early_stop={"monitor": "valid/auc", "mode": "max"})
    got = []
    for auc in (0.70, 0.72, 0.71, 0.72, 0.73):
        sched.after_validation({"auc": auc})
        got.append(lrs(parts))
    assert [g["dense"] for g in got] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5, 1e-5])
    assert [g["embedding"] for g in got] == pytest.approx([0.05, 0.05, 5e-3, 5e-4, 5e-4])


@pytest.mark.parametrize("scheduler, early_stop", [
    ({"name": "plateau", "monitor": "valid/logloss"}, None),  # its own monitor, no mode: it ran in mode max
    ({"name": "plateau"}, {"monitor": "valid/logloss"}),  # the run's monitor, no mode
])
def test_a_plateau_on_logloss_cuts_the_lr_only_when_logloss_stops_falling(scheduler, early_stop):
    sched, parts = schedules(scheduler, early_stop=early_stop)
    got = []
    for logloss in (0.50, 0.49, 0.495, 0.48):
        sched.after_validation({"logloss": logloss})
        got.append(lrs(parts)["dense"])
    assert got == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])


@pytest.mark.parametrize("train, message", [
    ({"early_stop": {"monitor": "valid/logloss", "mode": "max"}},
     r"^train\.early_stop\.mode: valid/logloss improves as it falls, so mode must be min"),
    ({"early_stop": {"monitor": "valid/auc", "mode": "min"}}, r"^train\.early_stop\.mode: valid/auc improves as it rises"),
    ({"scheduler": {"name": "plateau", "monitor": "valid/gauc", "mode": "min"}}, r"^train\.scheduler\.mode: valid/gauc"),
    ({"scheduler": {"name": "plateau", "mode": "min"}}, r"^train\.scheduler\.mode: valid/auc improves as it rises"),
])
def test_a_mode_against_its_monitors_direction_is_refused(train, message):
    """mode max on a logloss kept the worst checkpoint and cut the lr as the loss fell."""
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({"train": train})


def test_early_stopping_on_a_loss_follows_it_down_without_a_mode():
    assert recipe_from_dict({"train": {"early_stop": {"monitor": "valid/logloss"}}}).train.best_by == (
        "valid/logloss", "min")
    assert recipe_from_dict({}).train.best_by == ("valid/auc", "max")


def test_embedding_scheduler_replaces_the_shared_one():
    sched, parts = schedules({"name": "step", "factor": 0.5}, embedding_scheduler={"name": "constant"})
    sched.before_step(epoch=3, step=0)
    assert lrs(parts) == pytest.approx({"dense": 1e-3 * 0.5**3, "embedding": 0.05})


@pytest.mark.parametrize(
    "train, message",
    [
        ({"scheduler": {"name": "exponential"}}, r"^train\.scheduler\.name: expected one of constant, plateau"),
        ({"scheduler": {"name": ["cosine"]}}, r"^train\.scheduler\.name: expected one of constant, .*, got \['cosine'\]$"),
        ({"embedding_scheduler": {"name": {"step": 1}}}, r"^train\.embedding_scheduler\.name: expected one of constant"),
        ({"scheduler": {"name": "cosine", "patience": 2}}, r"^train\.scheduler\.patience: unknown key"),
        ({"scheduler": {"name": "plateau", "factor": "big"}}, r"^train\.scheduler\.factor: expected float"),
        ({"scheduler": {"name": "linear_warmup", "decay": "cosine"}},
         r"^train\.scheduler\.decay_steps: must be >= 1 with decay 'cosine', not given$"),
        ({"scheduler": {"name": "linear_warmup", "decay_steps": 100}},
         r"^train\.scheduler\.decay_steps: 100 is read by a decay only; set decay \(linear or cosine\) or leave "
         r"decay_steps out$"),
        ({"scheduler": {"name": "linear_warmup", "warmup_steps": 10, "min_lr": 1e-5}},
         r"^train\.scheduler\.min_lr: 1e-05 is read by a decay only; set decay \(linear or cosine\) or leave "
         r"min_lr out$"),
        ({"early_stop": {"min_delta": -1}}, r"^train\.early_stop\.min_delta: must be >= 0, got -1\.0$"),
        ({"early_stop": {"monitor": "valid/foo"}}, r"^train\.early_stop\.monitor: 'valid/foo' is not logged; choose"),
        ({"scheduler": {"name": "plateau", "monitor": "valid/accuracy"}},
         r"^train\.scheduler\.monitor: must be a validation metric \(valid/auc, valid/logloss, valid/gauc\), got "
         r"'valid/accuracy'$"),
        # each range names its key and value (one message listed every range of the schedule)
        ({"scheduler": {"name": "plateau", "factor": 1}}, r"^train\.scheduler\.factor: must be in \(0, 1\), got 1\.0$"),
        ({"embedding_scheduler": {"name": "plateau", "patience": -1}},
         r"^train\.embedding_scheduler\.patience: must be >= 0, got -1$"),
        ({"scheduler": {"name": "plateau", "min_lr": -1}}, r"^train\.scheduler\.min_lr: must be >= 0, got -1\.0$"),
        ({"scheduler": {"name": "cosine", "epochs": 0}}, r"^train\.scheduler\.epochs: must be >= 1, got 0$"),
        ({"scheduler": {"name": "cosine", "min_lr": -1e-3}}, r"^train\.scheduler\.min_lr: must be >= 0, got -0\.001$"),
        ({"scheduler": {"name": "linear_warmup", "warmup_steps": -5}},
         r"^train\.scheduler\.warmup_steps: must be >= 0, got -5$"),
        ({"scheduler": {"name": "step", "step_epochs": 0}}, r"^train\.scheduler\.step_epochs: must be >= 1, got 0$"),
        ({"scheduler": {"name": "step", "factor": 2}}, r"^train\.scheduler\.factor: must be in \(0, 1\], got 2\.0$"),
    ],
)
def test_invalid_schedules_name_the_key(train, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({"train": train})


def optimizers_of(raw: dict) -> None:
    """Checks a new run's schedule floors and builds its optimizers, over a small schema."""
    from ctr.train.checks import check_schedule_floors
    from ctr.train.task import CTRTask
    from tests.embeddings.schemas import schema

    task = CTRTask(recipe_from_dict({"model": {"name": "lr"}, **raw}), schema())
    check_schedule_floors(task.recipe, task.net)
    task.configure_optimizers()


@pytest.mark.parametrize("train, message", [
    ({"scheduler": {"name": "cosine", "min_lr": 1}}, r"^train\.scheduler\.min_lr: 1 is above train\.optimizer\.lr "
                                                      r"0\.001, the lr it falls from"),  # it raised the lr to 1
    ({"embedding_optimizer": {"lr": 0.01}, "embedding_scheduler": {"name": "plateau", "min_lr": 0.1}},
     r"^train\.embedding_scheduler\.min_lr: 0\.1 is above train\.embedding_optimizer\.lr 0\.01"),
    ({"embedding_optimizer": {"lr": 0.01}, "optimizer": {"lr": 0.1},
      "scheduler": {"name": "linear_warmup", "decay": "cosine", "decay_steps": 5, "min_lr": 0.05}},
     r"^train\.scheduler\.min_lr: 0\.05 is above train\.embedding_optimizer\.lr 0\.01"),
    ({"embedding_optimizer": {"lr": 0.01, "name": "adagrad", "fused": True}, "optimizer": {"lr": 0.1},
      "scheduler": {"name": "cosine", "min_lr": 0.05}},
     r"^train\.scheduler\.min_lr: 0\.05 is above train\.embedding_optimizer\.lr 0\.01"),
])
def test_a_floor_above_the_lr_it_schedules_is_refused(train, message):
    with pytest.raises(RecipeError, match=message):
        optimizers_of({"train": train})


@pytest.mark.parametrize("embedding", [{"method": "int8"}, {"method": "dhe", "budget": 0.5}])
def test_a_floor_above_an_unused_embedding_optimizer_lr_is_kept(embedding):
    """int8 updates its rows itself (embedding.optimizer), dhe has none (its MLP is dense):
    train.embedding_optimizer's lr, which the shared schedule's min_lr was compared with,
    schedules nothing there."""
    optimizers_of({"embedding": {"dim": 8, **embedding}, "train": {
        "optimizer": {"lr": 0.1}, "scheduler": {"name": "cosine", "min_lr": 0.06}}})


def test_fused_embeddings_may_keep_a_constant_lr_under_a_dense_schedule():
    recipe = recipe_from_dict({"train": {"scheduler": {"name": "cosine"}, "embedding_scheduler": {"name": "constant"},
                                         "embedding_optimizer": {"name": "adagrad", "fused": True}}})
    assert recipe.train.schedule_of("dense").name == "cosine" and recipe.train.schedule_of("embedding") is None


def logged_lrs(run):
    """``lr/dense`` per epoch from the run's metrics.csv."""
    with open(run / "logs" / "metrics.csv") as f:
        return {int(row["epoch"]): float(row["lr/dense"]) for row in csv.DictReader(f) if row.get("lr/dense")}


def last_lr(run):
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return checkpoint["optimizer_states"][0]["dense"]["param_groups"][0]["lr"]


@pytest.mark.slow  # three short runs per schedule
@pytest.mark.parametrize(
    "scheduler, expected",
    [
        # min_delta 1: AUC never gains that much, so every validation after the first cuts the lr
        ({"name": "plateau", "min_delta": 1.0}, [1e-3, 1e-3, 1e-4, 1e-5]),
        ({"name": "step", "factor": 0.5}, [1e-3, 5e-4, 2.5e-4, 1.25e-4]),
        ({"name": "cosine"}, [1e-3 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]),
        ({"name": "linear_warmup", "warmup_steps": 25}, [0.04e-3, 0.44e-3, 0.84e-3, 1e-3]),
    ],
)
def test_a_resumed_run_continues_the_schedule(tmp_path, scheduler, expected):
    """Two epochs, then a resume to four: the lr of the resumed epochs (metrics.csv; Lightning's
    CSV logger starts a new file on resume) and the optimizer's lr at the end (last.ckpt) are
    those of four epochs in one go."""
    def recipe(epochs):
        train_block = {"epochs": epochs, "early_stop": None, "scheduler": scheduler}
        return recipe_from_dict(tiny_recipe(tmp_path, train=train_block))

    train(recipe(4), tmp_path / "whole")
    train(recipe(2), tmp_path / "resumed")
    (tmp_path / "resumed" / "metrics.json").unlink()  # a finished run refuses --resume: continue it as unfinished
    begun_with(tmp_path / "resumed", recipe(4).to_dict())  # as if begun for four epochs
    train(recipe(4), tmp_path / "resumed", resume=True)
    whole, resumed = logged_lrs(tmp_path / "whole"), logged_lrs(tmp_path / "resumed")
    assert [whole[e] for e in range(4)] == pytest.approx(expected, rel=1e-6)
    assert [resumed[e] for e in (2, 3)] == pytest.approx(expected[2:], rel=1e-6)
    assert last_lr(tmp_path / "resumed") == pytest.approx(last_lr(tmp_path / "whole"), rel=1e-9)


def test_a_new_run_with_a_floor_above_its_lr_is_refused_before_anything_is_written(tmp_path):
    recipe = recipe_from_dict(tiny_recipe(tmp_path, train={"scheduler": {"name": "cosine", "min_lr": 1}}))
    with pytest.raises(RecipeError, match=r"^train\.scheduler\.min_lr: 1 is above train\.optimizer\.lr"):
        train(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_new_distributed_run_with_a_floor_above_its_lr_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """The distributed loop (here a group of one gloo process) trained such a run: only the
    one-process runner checked the floor."""
    from ctr.train import distributed
    from ctr.train.launch import process_group
    from ctr.train.rundir import RunDir

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    recipe = recipe_from_dict(tiny_recipe(tmp_path, train={"scheduler": {"name": "cosine", "min_lr": 1}}))
    with process_group(recipe) as place, pytest.raises(RecipeError, match=r"^train\.scheduler\.min_lr: 1 is above"):
        distributed.train(recipe, RunDir(tmp_path / "run"), False, place)
    assert not (tmp_path / "run").exists()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("distributed", [False, True])
def test_a_cosine_spans_the_epochs_of_the_stage_it_schedules(tmp_path, monkeypatch, distributed):
    """A stage of more epochs than ``train.epochs`` (deeplight's fine-tune, 3 against 1): the
    cosine without ``epochs`` of its own falls over the stage's 3, where it reached its floor
    (lr 0) after the first and the stage's later epochs trained nothing. On one process and in
    the distributed loop (a group of one gloo process)."""
    from ctr.train import distributed as distributed_train
    from ctr.train.launch import process_group
    from ctr.train.rundir import RunDir

    embedding = {"method": "deeplight", "dim": 8, "budget": 0.5, "stages": {"finetune": {"epochs": 3}}}
    raw = tiny_recipe(tmp_path, embedding=embedding, train={"epochs": 1, "early_stop": None,
                                                            "scheduler": {"name": "cosine"}},
                      trainer={"num_threads": 1})
    if distributed:
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", str(free_port()))
        with process_group(recipe_from_dict(raw)) as place:
            distributed_train.train(recipe_from_dict(raw), RunDir(tmp_path / "run"), False, place)
    else:
        train(recipe_from_dict(raw), tmp_path / "run")
    expected = [1e-3 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)]
    assert [logged_lrs(tmp_path / "run")[e] for e in range(3)] == pytest.approx(expected, rel=1e-6)
