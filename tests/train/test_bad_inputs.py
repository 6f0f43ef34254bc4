"""Every bad input of docs/errors.md: one line on stderr, exit code 2, no traceback, nothing
written (no run directory, no data cache, an existing file left as it was)."""

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ctr.cli import main
from ctr.errors import RecipeError
from ctr.recipe import recipe_from_dict
from ctr.train.placement import placement
from tests.conftest import tiny_recipe


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line(code, err, message):
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("ctr: error: ") and message in err, err


def write_recipe(tmp_path, **sections):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, **sections)))
    return path


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.optimizer.lr=-1", "train.optimizer.lr: must be > 0, got -1.0"),
        ("train.embedding_optimizer.lr=0", "train.embedding_optimizer.lr: must be > 0"),
        ("train.max_steps=0", "train.max_steps: must be >= 1 or null"),
        ("embedding.backend=cuda", "embedding.backend: unknown kernel backend 'cuda'"),
        ("train.batch_sise=8", "train.batch_sise: unknown key, did you mean batch_size? (allowed: "),
        ("embedding.method=hsah", "embedding.method: unknown embedding method 'hsah', did you mean hash? (registered: "),
        ("trainer.devices=0", "trainer.devices: must be >= 1, got 0"),
        ("trainer.strategy=ddp", "trainer.strategy: 'ddp': use one of auto, single_device"),
        ("trainer.accelerator=tpu", "trainer.accelerator: 'tpu': choose from"),
        ("train.embedding_optimizer.name=adam",
         "train.embedding_optimizer.name: adam cannot step sparse table gradients (embedding.gradients: sparse)"),
        ("model.top_mlp=[16,0]", "model.top_mlp: layer widths must be >= 1, got [16, 0]"),
        ("data.path=rows.csv", "data.path: the synthetic dataset generates its rows and reads no file; name the "
                               "dataset that reads 'rows.csv' in data.dataset (csv, parquet, criteo, ...)"),
    ],
)
def test_bad_recipe_value_stops_before_any_work(tmp_path, capsys, override, message):
    recipe = write_recipe(tmp_path)
    code, err = run_cli(capsys, "train", recipe, "-o", override, "--out", tmp_path / "run")
    assert_one_line(code, err, message)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("override, largest", [
    ("embedding.dim=1000000000000", "embedding.dim = 1000000000000"),
    ("embedding.dim=100000000000000000000", "embedding.dim = 100000000000000000000"),  # past int64
    ("model.bottom_mlp=[100000000000000]", "model.bottom_mlp = [100000000000000]"),
    ("model.top_mlp=[16,100000000000000]", "model.top_mlp = [16, 100000000000000]"),
])  # each past a 47-bit address space: refused by the allocator whatever the kernel's overcommit setting
def test_sizes_past_the_machines_memory_are_one_line_naming_the_key(tmp_path, capsys, override, largest):
    """Tables or layers that cannot be allocated ended in torch's allocator traceback (or its
    C++ overflow error past int64): one line naming the part and its largest size."""
    recipe = write_recipe(tmp_path)
    code, err = run_cli(capsys, "train", recipe, "-o", override, "--out", tmp_path / "run")
    assert_one_line(code, err, "cannot be allocated")
    assert f"(the largest: {largest})" in err, err
    assert not (tmp_path / "run").exists()


def test_devices_2_with_ddp_is_refused(tmp_path, capsys):
    recipe = write_recipe(tmp_path, trainer={"devices": 2, "strategy": "ddp", "progress_bar": False})
    code, err = run_cli(capsys, "train", recipe, "--out", tmp_path / "run")
    assert_one_line(code, err, "trainer.strategy: 'ddp'")


def test_several_machines_without_the_rendezvous_environment_is_refused(tmp_path, capsys, monkeypatch):
    """``ctr train`` on one of 2 machines needs MASTER_ADDR, MASTER_PORT and NODE_RANK; it starts no rank."""
    for key in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        monkeypatch.delenv(key, raising=False)
    recipe = write_recipe(tmp_path, trainer={"num_nodes": 2, "progress_bar": False})
    code, err = run_cli(capsys, "train", recipe, "--out", tmp_path / "run")
    assert_one_line(code, err, "trainer.num_nodes: set MASTER_ADDR, MASTER_PORT and NODE_RANK on every machine "
                               "(or launch with torchrun)")
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_triton_backend_without_a_gpu(tmp_path, capsys, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    code, err = run_cli(capsys, "train", write_recipe(tmp_path, embedding={"backend": "triton"}), "--out", tmp_path / "run")
    assert_one_line(code, err, "embedding.backend: kernel backend 'triton' requested but unavailable")
    assert not (tmp_path / "run").exists()


def test_a_backend_for_a_method_that_does_its_own_lookups_stops_before_any_work(tmp_path, capsys):
    recipe = write_recipe(tmp_path, embedding={"method": "robe", "budget": 0.5, "backend": "torch"})
    code, err = run_cli(capsys, "train", recipe, "--out", tmp_path / "run")
    assert_one_line(code, err, "embedding.backend: method 'robe' does its own lookups and does not read the kernel "
                               "backend (leave it out)")
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_the_environments_backend_is_checked_only_for_the_methods_that_read_it(monkeypatch):
    """``$CTR_KERNEL_BACKEND`` is the machine's preference: a method that does its own lookups
    trains where it names a backend the machine lacks (it was refused as embedding.backend)."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("CTR_KERNEL_BACKEND", "triton")
    assert placement(recipe_from_dict({"embedding": {"method": "pep", "budget": 0.5}})).device.type == "cpu"
    with pytest.raises(RecipeError, match=r"^\$CTR_KERNEL_BACKEND: kernel backend 'triton' requested but unavailable"):
        placement(recipe_from_dict({"embedding": {"method": "full"}}))


@pytest.mark.parametrize("env, message", [
    ("bogus", "unknown kernel backend 'bogus' (choose from torch, triton, fbgemm)"),
    ("fbgemm", "kernel backend 'fbgemm' has no fused sparse_adam"),
])
def test_a_backend_from_the_environment_is_named_as_the_environments(monkeypatch, env, message):
    """A backend the recipe does not set comes from ``$CTR_KERNEL_BACKEND``: its refusal names
    the variable (the recipe has no embedding.backend to fix); the recipe's own key wins."""
    monkeypatch.setenv("CTR_KERNEL_BACKEND", env)
    fused = {"embedding_optimizer": {"name": "sparse_adam", "lr": 0.001, "fused": True}}
    with pytest.raises(RecipeError) as err:
        placement(recipe_from_dict({"embedding": {"method": "full"}, "train": fused}))
    assert str(err.value).startswith(f"$CTR_KERNEL_BACKEND: {message}")
    with pytest.raises(RecipeError, match="^embedding.backend: unknown kernel backend 'cuda'"):
        placement(recipe_from_dict({"embedding": {"method": "full", "backend": "cuda"}}))


def test_gpu_accelerator_without_a_gpu(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    recipe = write_recipe(tmp_path, trainer={"accelerator": "gpu"})
    code, err = run_cli(capsys, "train", recipe, "--out", tmp_path / "run")
    assert_one_line(code, err, "trainer.accelerator: 'gpu' but this machine has no CUDA GPU")
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("target", ["file", "inside-file"])
def test_out_naming_a_regular_file(tmp_path, capsys, target):
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me\n")
    out = taken if target == "file" else taken / "run"
    code, err = run_cli(capsys, "train", write_recipe(tmp_path), "--out", out)
    assert_one_line(code, err, "is not a folder; choose another --out")
    assert taken.read_text() == "keep me\n" and not (tmp_path / "cache").exists()


def test_out_where_no_folder_can_be_made(tmp_path, capsys):
    """An --out in /proc (no folder can be made there) names that --out, not ctr's lock file."""
    code, err = run_cli(capsys, "train", write_recipe(tmp_path), "--out", "/proc/ctr-no-run")
    assert_one_line(code, err, "/proc/ctr-no-run: cannot be written (no such file or directory)")
    assert not (tmp_path / "cache").exists()


def test_out_naming_a_folder_that_is_not_a_run(tmp_path, capsys):
    """A folder of other files (a home folder, `--out .`) is not trained into: a run would
    put its recipe.yaml, schema/ and logs/ among them and overwrite any of the same name."""
    out = tmp_path / "notes"
    out.mkdir()
    (out / "recipe.yaml").write_text("mine\n")
    (out / "todo.txt").write_text("keep me\n")
    code, err = run_cli(capsys, "train", write_recipe(tmp_path), "--out", out)
    assert_one_line(code, err, "notes: a folder that is not a run directory (it holds todo.txt); choose another --out")
    assert sorted(p.name for p in out.iterdir()) == ["recipe.yaml", "todo.txt"]
    assert (out / "recipe.yaml").read_text() == "mine\n" and not (tmp_path / "cache").exists()


def test_a_run_folder_left_by_a_schema_replace_killed_between_its_renames_is_trained_into(tmp_path, capsys):
    """A run killed before training, between the renames that put its schema/ in place, leaves
    ``.schema.old``: a run folder's own leftover, not a stranger's file that refuses --out."""
    out = tmp_path / "run"
    (out / ".schema.old").mkdir(parents=True)
    (out / ".schema.old" / "schema.json").write_text("{}")
    assert main(["train", str(write_recipe(tmp_path)), "--out", str(out)]) == 0, capsys.readouterr().err[-2000:]
    assert (out / "metrics.json").exists() and not (out / ".schema.old").exists()


@pytest.mark.parametrize(
    "content, message",
    [(b"", "not a readable checkpoint"), (b"garbage" * 10, "not a readable checkpoint"), (None, "not a readable checkpoint")],
    ids=["empty", "garbage", "truncated"],
)
def test_eval_on_a_broken_checkpoint(tmp_path, capsys, content, message):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    ckpt = run / "checkpoints" / "best.ckpt"
    if content is None:  # a real checkpoint cut in half
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, ckpt)
        content = ckpt.read_bytes()[: ckpt.stat().st_size // 2]
    ckpt.write_bytes(content)
    code, err = run_cli(capsys, "eval", run)
    assert_one_line(code, err, message)
    assert str(ckpt) in err


def test_synth_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "rows.tsv"
    out.write_text("mine\n")
    code, err = run_cli(capsys, "data", "synth", out, "--rows", "10")
    assert_one_line(code, err, "exists (give --force to replace it)")
    assert out.read_text() == "mine\n"
    assert main(["data", "synth", str(out), "--rows", "10", "--vocab-scale", "0.01", "--force"]) == 0
    assert len(out.read_text().splitlines()) == 10


def test_a_partial_optimizer_section_keeps_its_defaults(tmp_path):
    """``embedding_optimizer: {lr: 0.01}`` stays adagrad (not the dense optimizer's adam);
    an arch optimizer given only ``lr`` keeps its method's optimizer."""
    recipe = recipe_from_dict(tiny_recipe(tmp_path, train={"embedding_optimizer": {"lr": 0.01}}))
    assert (recipe.train.embedding_optimizer.name, recipe.train.embedding_optimizer.lr) == ("adagrad", 0.01)
    dnis = recipe_from_dict(tiny_recipe(tmp_path, embedding={"method": "dnis", "budget": 0.5, "arch_optimizer": {"lr": 0.5}}))
    assert (dnis.embedding.arch_optimizer.name, dnis.embedding.arch_optimizer.lr) == ("sgd", 0.5)


def test_resume_from_a_broken_last_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "schema").mkdir()  # a run writes it before its first checkpoint
    (run / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    code, err = run_cli(capsys, "train", "--resume", run)
    assert_one_line(code, err, "last.ckpt: not a readable checkpoint")
    assert not (run / "metrics.json").exists()


@pytest.mark.parametrize("devices", [1, 2])
def test_resume_after_an_edit_that_changes_the_model(tmp_path, request, devices):
    """recipe.yaml edited between the kill and the resume so that the checkpoint's weights
    no longer fit (a wider layer), in a run that kept no copy of its first recipe: one line
    naming the checkpoint, nothing written."""
    captured = request.getfixturevalue("capsys" if devices == 1 else "capfd")  # capfd: the ranks' stderr too
    recipe = write_recipe(tmp_path, train={"max_steps": 2}, trainer={"devices": devices, "progress_bar": False})
    assert run_cli(captured, "train", recipe, "--out", tmp_path / "run")[0] == 0
    run = tmp_path / "run"
    (run / "metrics.json").unlink()  # as a kill in the final evaluation leaves it
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    saved["model"]["bottom_mlp"] = [32]
    (run / "recipe.yaml").write_text(yaml.safe_dump(saved))
    (run / "schema" / "recipe.yaml").unlink()  # a run of an earlier ctr: no copy tells the edit, the checkpoint does
    code, err = run_cli(captured, "train", "--resume", run)
    if devices == 2:  # the ranks are processes of their own
        assert "Traceback" not in err, err
        err = err.splitlines()[-1]  # after the log lines of the ranks
    last = "last.ckpt" if devices == 1 else "last"
    assert_one_line(code, err, f"{run / 'checkpoints' / last}: does not fit this run's model (")
    assert "bottom" in err and "mismatch" in err.lower(), err  # the first mismatch, not torch's heading
    assert not (run / "metrics.json").exists()


@pytest.mark.parametrize("embedding", [{"method": "full", "dim": 8}, {"method": "dnis", "dim": 8, "budget": 0.5}],
                         ids=["full", "multi-stage"])
def test_an_eval_interval_past_the_epoch_is_one_line(tmp_path, capsys, embedding):
    """The epoch's batches are known once the data is prepared, after the run folder got its
    recipe and schema: the refusal removes the folders it made (a multi-stage method has saved
    no stage yet), and the same command with a fitting interval trains there."""
    recipe, out = write_recipe(tmp_path, train={"epochs": 1}, embedding=embedding), tmp_path / "new" / "run"
    code, err = run_cli(capsys, "train", recipe, "-o", "train.eval_every_n_steps=100000", "--out", out)
    assert_one_line(code, err, "train.eval_every_n_steps: 100000 is more than the")
    assert not (tmp_path / "new").exists()  # nor the folder made for the run's lock beside it
    assert run_cli(capsys, "train", recipe, "-o", "train.eval_every_n_steps=2", "--out", out)[0] == 0


@pytest.mark.slow
def test_a_distributed_run_refused_after_its_data_is_prepared_leaves_no_run_folder(tmp_path, capfd):
    """Rank 0 wrote the recipe and schema before every rank refused the interval: it removes them."""
    recipe = write_recipe(tmp_path, trainer={"devices": 2, "progress_bar": False})
    code, err = run_cli(capfd, "train", recipe, "-o", "train.eval_every_n_steps=100000", "--out", tmp_path / "run")
    assert code == 2 and "train.eval_every_n_steps: 100000 is more than the" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("before", [[], ["recipe.yaml", "schema/"]], ids=["empty", "left-by-a-refused-run"])
def test_a_refusal_after_the_data_is_prepared_leaves_the_folder_as_it_was(tmp_path, capsys, before):
    """A folder made for --out stays, empty; one holding what an earlier refused run left keeps
    those names (a guard: the run replaces them, as it did before removing what it wrote)."""
    recipe, run = write_recipe(tmp_path), tmp_path / "run"
    run.mkdir()
    for name in before:
        (run / name).mkdir() if name.endswith("/") else (run / name).write_text("{}\n")
    code, err = run_cli(capsys, "train", recipe, "-o", "train.eval_every_n_steps=100000", "--out", run)
    assert_one_line(code, err, "train.eval_every_n_steps: 100000 is more than the")
    assert sorted(p.name for p in run.iterdir()) == sorted(name.rstrip("/") for name in before)


def test_a_refusal_whose_clean_up_fails_is_still_its_one_line(tmp_path, capsys, caplog, monkeypatch):
    """Removing what a refused run wrote can fail (permissions, a busy NFS file): the run's
    refusal is still the one line the user reads, and the folder left is named in a warning."""
    recipe, run = write_recipe(tmp_path), tmp_path / "run"

    real_rmtree = shutil.rmtree

    def denied(path, *args, **kwargs):
        if Path(path) == run:
            raise PermissionError(13, "Permission denied", str(path))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", denied)
    code, err = run_cli(capsys, "train", recipe, "-o", "train.eval_every_n_steps=100000", "--out", run)
    assert code == 2 and "train.eval_every_n_steps: 100000 is more than the" in err, err
    assert "Traceback" not in err, err
    assert f"could not remove {run}, which the refused run wrote" in caplog.text


@pytest.mark.parametrize("early_stop", [{"monitor": "valid/auc"}, {"monitor": "valid/gauc"}, None])
def test_an_auc_monitored_on_a_one_class_valid_split_is_one_line(tmp_path, capsys, early_stop):
    """AUC is undefined on one class: early stopping (Lightning's, at a non-finite value) ended
    such a run at its first validation without a word. Monitoring the logloss trains."""
    (tmp_path / "train.csv").write_text("label,user,ad\n" + "".join(f"{i % 2},u{i % 5},a{i % 3}\n" for i in range(40)))
    (tmp_path / "valid.csv").write_text("label,user,ad\n" + "".join(f"0,u{i},a{i}\n" for i in range(6)))
    data = {"dataset": "csv", "path": str(tmp_path / "train.csv"), "valid_path": str(tmp_path / "valid.csv"),
            "group": "user", "split": {"test": 0.25}, "features": [{"name": "user"}, {"name": "ad"}]}
    recipe = tmp_path / "r.yaml"
    raw = tiny_recipe(tmp_path, train={"batch_size": 8, "epochs": 2, "early_stop": early_stop})
    recipe.write_text(yaml.safe_dump({**raw, "data": {**data, "cache_dir": raw["data"]["cache_dir"]}}))
    code, err = run_cli(capsys, "train", recipe, "--out", tmp_path / "run")
    monitor = early_stop["monitor"] if early_stop else "valid/auc"
    key = "train.early_stop.monitor" if early_stop else "the best checkpoint's monitor"  # not a key the recipe nulled
    assert_one_line(code, err, f"data: the valid split has 6 rows, all non-clicks (label 0), so {monitor} "
                               f"({key}) is undefined; give validation more rows (data.valid_path) "
                               "or monitor valid/logloss")
    logloss = ["-o", "train.early_stop={monitor: valid/logloss, mode: min}"]
    code, err = run_cli(capsys, "train", recipe, "--out", tmp_path / "run", *logloss,
                        "-o", "embedding={method: optembed, dim: 8, budget: 0.5}")
    assert_one_line(code, err, "so valid/auc (embedding.method: optembed's search) is undefined")  # scores by AUC
    code, err = run_cli(capsys, "train", recipe, "--out", tmp_path / "run", *logloss)
    assert code == 0, err
    assert yaml.safe_load((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 2


def test_a_bilevel_search_on_a_validation_split_too_small_for_a_batch_is_one_line(tmp_path, capsys):
    (tmp_path / "train.csv").write_text("label,user,ad\n" + "".join(f"{i % 2},u{i % 5},a{i % 3}\n" for i in range(40)))
    (tmp_path / "valid.csv").write_text("label,user,ad\n1,u1,a1\n")
    raw = tiny_recipe(tmp_path, train={"batch_size": 8, "early_stop": {"monitor": "valid/logloss", "mode": "min"}},
                      embedding={"method": "autodim", "dim": 8, "budget": 0.9})
    raw["data"] = {"dataset": "csv", "path": str(tmp_path / "train.csv"), "valid_path": str(tmp_path / "valid.csv"),
                   "cache_dir": raw["data"]["cache_dir"], "features": [{"name": "user"}, {"name": "ad"}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    code, err = run_cli(capsys, "train", tmp_path / "r.yaml", "--out", tmp_path / "run")
    assert_one_line(code, err, "data: the valid split's 1 row is too few for autodim's search, which trains on "
                               "validation batches of at least 2 rows a process")


@pytest.mark.parametrize("overrides, message", [
    (["train.early_stop.monitor=valid/gauc"], "train.early_stop.monitor: valid/gauc needs groups; name their column"),
    (["train.scheduler={name: plateau, monitor: valid/gauc}"], "train.scheduler.monitor: valid/gauc needs groups"),
])
def test_a_monitor_the_run_never_logs_is_one_line_before_training(tmp_path, capsys, overrides, message):
    """The tiny data has no group column; a plateau schedule steps on validation metrics."""
    recipe = write_recipe(tmp_path)
    code, err = run_cli(capsys, "train", recipe, *[a for o in overrides for a in ("-o", o)], "--out", tmp_path / "run")
    assert_one_line(code, err, message)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_plateau_under_early_stopping_on_the_training_loss_is_refused_before_any_work(tmp_path, capsys):
    """A recipe check: it ran after the data was prepared, leaving a run directory and a cache entry."""
    overrides = ["train.early_stop.monitor=train/loss", "train.early_stop.mode=min", "train.scheduler={name: plateau}"]
    code, err = run_cli(capsys, "train", write_recipe(tmp_path), *[a for o in overrides for a in ("-o", o)],
                        "--out", tmp_path / "run")
    assert_one_line(code, err, "train.scheduler.monitor: a plateau schedule watches a validation metric, not early "
                               "stopping's train/loss")
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("split", ["valid", "test"])
def test_a_split_without_rows_is_one_line_naming_its_key(tmp_path, capsys, split):
    recipe = write_recipe(tmp_path)
    code, err = run_cli(capsys, "train", recipe, "-o", f"data.split.{split}=0.0", "--out", tmp_path / "run")
    assert_one_line(code, err, f"data: the {split} split holds no rows (data.split.{split} above 0)")  # synthetic: no files


def test_max_steps_before_the_first_validation_keeps_the_trained_weights(tmp_path, capsys):
    """eval_every_n_steps 6 and max_steps 3: the only validation is at step 3, where max_steps
    ends the run; it ends with a checkpoint of its trained weights, evaluated."""
    recipe = write_recipe(tmp_path, train={"max_steps": 3, "eval_every_n_steps": 6, "early_stop": None})
    code, err = run_cli(capsys, "train", recipe, "--out", tmp_path / "run")
    assert code == 0, err
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 3 and (tmp_path / "run" / "metrics.json").exists()
    with (tmp_path / "run" / "logs" / "metrics.csv").open(newline="") as file:
        validated = [int(row["step"]) + 1 for row in csv.DictReader(file) if row.get("valid/auc")]
    assert validated == [3]


@pytest.mark.parametrize("devices", [1, 2])
def test_a_run_directory_another_process_trains_in_is_refused(tmp_path, capsys, devices):
    """Two ``ctr train`` (or two ``--resume``) on one run directory at once interleaved their
    logs and checkpoints; the second is refused while the first holds it (the launcher holds
    it for its ranks). The lock goes with its holder."""
    from ctr.train.rundir import RunDir

    recipe = write_recipe(tmp_path, trainer={"devices": devices})
    with RunDir(tmp_path / "run").exclusive():
        code, err = run_cli(capsys, "train", recipe, "--out", tmp_path / "run")
        assert_one_line(code, err, f"{tmp_path / 'run'}: another ctr process is training in this run directory")
        assert not (tmp_path / "run").exists()
        (tmp_path / "run" / "checkpoints").mkdir(parents=True)  # the first run's checkpoint is written
        (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"")
        code, err = run_cli(capsys, "train", recipe, "--out", tmp_path / "run")  # not: "already holds a run; --resume"
        assert_one_line(code, err, f"{tmp_path / 'run'}: another ctr process is training in this run directory")
    assert not (tmp_path / ".run.lock").exists()


@pytest.mark.parametrize("devices", [1, 2])
def test_data_with_numeric_features_only_is_one_line(tmp_path, capsys, devices):
    """Every model embeds ids: numeric-only data failed copying a vocabulary folder that
    preparation (rightly) never wrote."""
    (tmp_path / "train.csv").write_text("label,a,b\n" + "".join(f"{i % 2},{i / 7:.3f},{i % 5}\n" for i in range(64)))
    raw = tiny_recipe(tmp_path, trainer={"devices": devices, "progress_bar": False}, train={"batch_size": 8})
    raw["data"] = {"dataset": "csv", "path": str(tmp_path / "train.csv"), "cache_dir": raw["data"]["cache_dir"],
                   "features": [{"name": "a", "kind": "numeric"}, {"name": "b", "kind": "numeric"}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    if devices == 1:
        code, err = run_cli(capsys, "train", tmp_path / "r.yaml", "--out", tmp_path / "run")
    else:  # the ranks are processes of their own: their stderr is not captured here
        done = subprocess.run([sys.executable, "-m", "ctr", "train", str(tmp_path / "r.yaml"), "--out",
                               str(tmp_path / "run")], capture_output=True, text=True, timeout=600)
        assert "Traceback" not in done.stderr, done.stderr
        code, err = done.returncode, done.stderr.strip().splitlines()[-1]
    assert_one_line(code, err, "data.features: every feature is numeric; the models embed ids")
    if devices == 1:  # the commands that build a model without training one (a traceback each before)
        recipe = tmp_path / "r.yaml"
        for command in (["plan", recipe, "--world-size", "2"], ["bench", "train", recipe, "--steps", "2"]):
            code, err = run_cli(capsys, *command)
            assert_one_line(code, err, "data.features: every feature is numeric; the models embed ids")


def test_fbgemm_without_the_fused_rule_is_refused_before_any_work(tmp_path, capsys):
    """fbgemm's CPU build has no fused Adam: a traceback after the data was prepared."""
    pytest.importorskip("fbgemm_gpu")
    recipe = write_recipe(tmp_path, embedding={"backend": "fbgemm"},
                          train={"embedding_optimizer": {"name": "sparse_adam", "lr": 0.001, "fused": True}})
    code, err = run_cli(capsys, "train", recipe, "--out", tmp_path / "run")
    assert_one_line(code, err, "embedding.backend: kernel backend 'fbgemm' has no fused sparse_adam")
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_a_fused_update_of_a_method_without_a_kernel_table_names_the_method(tmp_path, capsys):
    """It named the class (QuantizedEmbedding), not the recipe's method."""
    recipe = write_recipe(tmp_path, embedding={"method": "int8", "budget": 0.5},
                          train={"embedding_optimizer": {"name": "rowwise_adagrad", "lr": 0.05, "fused": True}})
    code, err = run_cli(capsys, "train", recipe, "--out", tmp_path / "run")
    assert_one_line(code, err, "train.embedding_optimizer.fused: embedding method int8 has no kernel table to update "
                               "fused; set fused: false")


@pytest.mark.parametrize("devices", [1, 2])
def test_a_budget_the_method_cannot_reach_leaves_no_run_directory(tmp_path, request, devices):
    """The method is built before the run directory is written: a refused budget left
    recipe.yaml and schema/ in --out (an empty-looking run a rerun then trained into)."""
    captured = request.getfixturevalue("capsys" if devices == 1 else "capfd")  # capfd: the ranks' stderr too
    recipe = write_recipe(tmp_path, embedding={"method": "hash", "budget": 0.0001},
                          trainer={"devices": devices, "progress_bar": False})
    code, err = run_cli(captured, "train", recipe, "--out", tmp_path / "run")
    if devices == 2:
        err = err.splitlines()[-1]  # after the log lines of the ranks
    assert_one_line(code, err, "embedding.budget")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["eval", "{missing}"], "{missing}: no such run directory"),
    (["train", "--resume", "{missing}"], "{missing}: no such run directory"),
    (["eval", "{empty}"], "{empty}: not a run directory (no recipe.yaml)"),
])
def test_a_run_directory_that_is_missing_or_not_a_run_is_one_line_saying_which(tmp_path, capsys, args, message):
    """A mistyped path read "not a run directory (no recipe.yaml)", as if the folder existed."""
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    code, err = run_cli(capsys, *(a.format(**paths) for a in args))
    assert_one_line(code, err, message.format(**paths))
    assert not paths["missing"].exists()


def test_a_train_split_of_one_class_is_one_line_naming_its_cache_entry(tmp_path, capsys):
    """A model learns nothing from one label: such a split (an encoding of all-zero labels, a
    wrong data.label) trained to the end and reported a meaningless run."""
    rows = "".join(f"0,u{i % 5},a{i % 3}\n" for i in range(40))
    (tmp_path / "train.csv").write_text("label,user,ad\n" + rows)
    (tmp_path / "valid.csv").write_text("label,user,ad\n" + "".join(f"{i % 2},u{i},a{i}\n" for i in range(6)))
    raw = tiny_recipe(tmp_path, train={"batch_size": 8, "early_stop": {"monitor": "valid/logloss", "mode": "min"}})
    raw["data"] = {"dataset": "csv", "path": str(tmp_path / "train.csv"), "valid_path": str(tmp_path / "valid.csv"),
                   "cache_dir": raw["data"]["cache_dir"], "features": [{"name": "user"}, {"name": "ad"}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    code, err = run_cli(capsys, "train", tmp_path / "r.yaml", "--out", tmp_path / "run")
    entry = next((tmp_path / "cache" / "data").iterdir())
    assert_one_line(code, err, f"data: the train split's 39 rows are all non-clicks (label 0) (encoded in {entry}); a "
                               "model learns nothing from one class: check data.label ('label') and the input rows")
    assert not (tmp_path / "run" / "checkpoints").exists()
