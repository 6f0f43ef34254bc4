"""A run saved by an earlier ctr still loads: its recipe.yaml's old keys are brought up."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from ctr import cli
from ctr.train.rundir import RunDir


def saved(tmp_path, raw):
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    return RunDir(tmp_path).load_recipe()


def test_a_movielens_run_keeps_the_split_its_data_seed_made(tmp_path):
    recipe = saved(tmp_path, {"data": {"dataset": "movielens", "path": "ml", "seed": 7,
                                       "split": {"valid": 0.1, "test": 0.1, "seed": 2024}}})
    assert recipe.data.split.seed == 7


def test_a_run_from_before_the_split_seed_keeps_the_recipe_seed(tmp_path):
    assert saved(tmp_path, {"seed": 5, "data": {"split": {"valid": 0.1, "test": 0.1}}}).data.split.seed == 5


def test_quantized_tables_keep_their_bits_and_unused_arch_optimizers_are_dropped(tmp_path):
    default = {"name": "adam", "lr": 0.001, "weight_decay": 0.0}
    assert saved(tmp_path, {"embedding": {"method": "int8", "digit": 8}}).embedding.method == "int8"
    assert saved(tmp_path, {"embedding": {"method": "int8", "digit": 16}}).embedding.digit == 16  # an int16 table
    for method in ("pep", "dedup", "deeplight"):
        assert saved(tmp_path, {"embedding": {"method": method, "budget": 0.5, "arch_optimizer": default}})
    kept = saved(tmp_path, {"embedding": {"method": "dnis", "budget": 0.5, "arch_optimizer": {**default, "lr": 0.5}}})
    assert kept.embedding.arch_optimizer.lr == 0.5


def test_a_loss_monitor_saved_with_the_old_default_mode_follows_the_loss(tmp_path):
    train = {"early_stop": {"monitor": "valid/logloss", "mode": "max", "patience": 2, "min_delta": 0.0},
             "scheduler": {"name": "plateau", "monitor": "valid/logloss", "mode": "max"}}
    recipe = saved(tmp_path, {"train": train, "trainer": {"precision": "16"}})
    assert recipe.train.best_by == ("valid/logloss", "min") and recipe.train.scheduler.mode is None
    assert recipe.trainer.precision == "16-mixed"


def test_a_run_of_a_whole_model_precision_no_longer_taken_loads_in_fp32(tmp_path):
    for precision in ("64-true", "bf16-true", 64):
        assert saved(tmp_path, {"trainer": {"precision": precision}}).trainer.precision == "32-true"


def test_a_din_authors_run_keeps_the_batch_norm_it_trained_with(tmp_path):
    """``input_norm`` is new; the ``authors`` form's default became the authors' inference-mode
    normalisation, so an ``authors`` run saved before it loads with its BatchNorm."""
    old = {"model": {"name": "din", "variant": "authors", "hidden": [200, 80]}}
    assert saved(tmp_path, old).model.top_input_norm == "batch"
    assert saved(tmp_path, {"model": {"name": "din", "variant": "authors", "input_norm": None}}).model.top_input_norm == "inference"
    assert saved(tmp_path, {"model": {"name": "din", "variant": "ctr"}}).model.top_input_norm == "none"


def test_a_backend_saved_for_a_method_that_never_read_it_is_dropped(tmp_path):
    """Earlier runs kept ``embedding.backend`` for every method (unread by pep): it is refused
    now, and their recipe loads without it."""
    assert saved(tmp_path, {"embedding": {"method": "pep", "budget": 0.5, "backend": "triton"}}).embedding.backend is None
    kept = saved(tmp_path, {"embedding": {"method": "hash", "budget": 0.5, "backend": "triton"}})
    assert kept.embedding.backend == "triton"


def test_a_path_saved_for_a_generated_dataset_is_dropped(tmp_path):
    """Earlier runs took ``data.path`` for ``synthetic`` (the default dataset) and ignored it: it
    is refused now, and their recipe loads without it (a dataset that reads files keeps it)."""
    assert saved(tmp_path, {"data": {"dataset": "synthetic", "rows": 1000, "path": "/d/rows.csv"}}).data.path is None
    assert saved(tmp_path, {"data": {"rows": 1000, "path": "/d/rows.csv"}}).data.path is None  # synthetic by default
    kept = saved(tmp_path, {"data": {"dataset": "csv", "path": "/d/rows.csv", "label": "y"}})
    assert kept.data.path == "/d/rows.csv"


def test_a_schedule_floor_above_its_lr_is_read_as_saved(tmp_path):
    """A min_lr above the lr it schedules is refused for a new run since; runs saved one
    (plateau's default 1e-6 under a smaller lr, which that plateau never lowered) are read
    with it, and resumed with the schedule they trained with."""
    plateau = saved(tmp_path, {"train": {"optimizer": {"lr": "5e-7"}, "scheduler": {"name": "plateau"}}})
    assert (plateau.train.optimizer.lr, plateau.train.scheduler.min_lr) == (5e-7, 1e-6)
    cosine = saved(tmp_path, {"train": {"optimizer": {"lr": 0.1}, "embedding_optimizer": {"lr": 0.01},
                                        "scheduler": {"name": "cosine", "min_lr": 0.05},
                                        "embedding_scheduler": {"name": "plateau", "min_lr": 0.1}}})
    assert (cosine.train.scheduler.min_lr, cosine.train.embedding_scheduler.min_lr) == (0.05, 0.1)


def test_split_fractions_saved_for_a_dataset_that_splits_its_rows_itself_are_dropped(tmp_path):
    """Earlier ``amazon`` runs took ``data.split.valid`` and ``test`` and ignored them: they are
    refused now, and their recipe loads with the defaults (its seed kept)."""
    data = {"dataset": "amazon", "path": "am", "split": {"valid": 0.3, "test": 0.2, "seed": 7}}
    split = saved(tmp_path, {"data": data}).data.split
    assert (split.valid, split.test, split.seed) == (0.1, 0.1, 7)


TIGHTENED = {  # values refused since runs were saved with them, that only training reads
    "dpq vq commitment 0": {"embedding": {"method": "dpq", "dim": 8, "budget": 0.5, "mode": "vq", "commitment": 0}},
    "max_vocab 0": {"data": {"features": [{"name": "C1", "max_vocab": 0}]}},
    "warmup decay_steps without a decay": {"train": {"scheduler": {"name": "linear_warmup", "decay_steps": 100}}},
    "early_stop patience 0": {"train": {"early_stop": {"patience": 0}}},
    "mgqe rare_centroids 1": {"embedding": {"method": "mgqe", "dim": 8, "budget": 0.5, "rare_centroids": 1}},
}


def saved_run(tmp_path, name):
    """A run folder (no checkpoint) begun with ``TIGHTENED[name]``."""
    from tests.conftest import begun_with, tiny_recipe

    run = tmp_path / "run"
    (run / "schema").mkdir(parents=True)
    begun_with(run, tiny_recipe(tmp_path, **TIGHTENED[name]))
    return run


@pytest.mark.parametrize("name", TIGHTENED)
@pytest.mark.parametrize("command", [["eval", "{run}"], ["predict", "{run}", "{tmp}/rows.csv", "--out", "{tmp}/s.csv"],
                                     ["export", "{run}", "--out", "{tmp}/model.pt2"]], ids=["eval", "predict", "export"])
def test_a_run_saved_with_a_value_refused_since_for_training_is_still_scored(tmp_path, capsys, name, command):
    """A value later refused because training with it learns nothing (vq's values kept their
    draw, every value OOV) stopped ``ctr eval`` of a finished run at its recipe; scoring reads
    the trained weights and the saved vocabularies, not these values."""
    run = saved_run(tmp_path, name)
    (tmp_path / "rows.csv").write_text("label\n1\n")
    assert cli.main([arg.format(run=run, tmp=tmp_path) for arg in command]) == 2
    assert capsys.readouterr().err.strip() == f"ctr: error: {run}: no checkpoint at {run / 'checkpoints/best.ckpt'}"


def test_a_saved_feature_refused_since_for_training_is_read_while_a_run_is_scored():
    from ctr.errors import scoring_a_saved_run
    from ctr.schema import FeatureSpec

    with pytest.raises(ValueError, match="max_vocab must be >= 1"):
        FeatureSpec(name="C1", max_vocab=0)
    with scoring_a_saved_run():
        assert FeatureSpec(name="C1", max_vocab=0).max_vocab == 0
    with pytest.raises(ValueError, match="max_vocab must be >= 1"):
        FeatureSpec(name="C1", max_vocab=0)


@pytest.mark.parametrize("name", TIGHTENED)
def test_a_resume_of_a_run_saved_with_a_value_refused_since_names_its_recipe(tmp_path, capsys, name):
    """Training with it goes on learning nothing: a resume is refused, naming the file."""
    run = saved_run(tmp_path, name)
    assert cli.main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ctr: error: {run / 'recipe.yaml'}: ") and "\n" not in err
    assert {"dpq vq commitment 0": "commitment: must be > 0 in mode vq", "max_vocab 0": "max_vocab must be >= 1",
            "warmup decay_steps without a decay": "train.scheduler.decay_steps: 100 is read by a decay only",
            "early_stop patience 0": "train.early_stop.patience: must be >= 1, got 0",
            "mgqe rare_centroids 1": "embedding.rare_centroids: must be >= 2, got 1"}[name] in err


BLOCKS = 5000  # dnis groups: more than the ids of all tables of tiny_recipe's data


@pytest.fixture(scope="module")
def blocks_run(tmp_path_factory):
    """A finished dnis run of ``BLOCKS`` groups (3 steps a stage), trained as a ctr that took
    more groups than ids did (``require_groups`` checked nothing): its folder and metrics."""
    from ctr.embeddings import dnis
    from ctr.recipe import recipe_from_dict
    from ctr.train.runner import train
    from tests.conftest import tiny_recipe

    tmp = tmp_path_factory.mktemp("blocks")
    raw = tiny_recipe(tmp, embedding={"method": "dnis", "dim": 8, "budget": 0.3, "blocks": BLOCKS},
                      train={"max_steps": 3})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dnis, "require_groups", lambda config, rows: None)
        metrics = train(recipe_from_dict(raw), tmp / "run")
    return tmp / "run", metrics


def test_a_run_saved_with_more_blocks_than_ids_is_still_scored(blocks_run, tmp_path):
    """``embedding.blocks`` above the ids is refused when the net is built (it needs the data's
    ids) since; ``ctr eval`` and ``export`` of such a run stopped there, and score its weights."""
    from tests.conftest import run_ctr

    run, metrics = blocks_run
    done = run_ctr("eval", run)
    assert done.returncode == 0, done.stderr
    assert abs(json.loads(done.stdout)["auc"] - metrics["test"]["auc"]) < 1e-6
    done = run_ctr("export", run, "--out", tmp_path / "model.pt2")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "model.pt2").is_file()


def test_a_resume_of_a_run_with_more_blocks_than_ids_names_its_recipe(blocks_run, tmp_path, capsys):
    """Training with groups past the ids is refused, a resume too, naming the run's recipe.yaml."""
    run = Path(shutil.copytree(blocks_run[0], tmp_path / "run"))
    (run / "metrics.json").unlink()  # a run stopped before its end
    assert cli.main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ctr: error: {run / 'recipe.yaml'}: embedding.blocks: {BLOCKS} is more than the ")
    assert "\n" not in err
