"""Distributed training (docs/distributed.md): 2 CPU processes on gloo against 1 process."""

import copy
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ctr.cli import main
from ctr.datasets import BatchLoader
from ctr.recipe import load_recipe
from ctr.train.distributed_epochs import rows_of
from ctr.train import launch
from ctr.train.launch import LAUNCHER, wait_all
from ctr.train.runner import evaluate, train
from ctr.train.rundir import RunDir
from tests.conftest import begun_with, kept_process_settings, run_ctr, tiny_recipe

MIXED = {"sharding": "table_wise", "tables": {"C3": "column_wise", "C1": "data_parallel"}}
ROOT = Path(__file__).resolve().parents[2]


def ctr(*args):
    return subprocess.run([sys.executable, "-m", "ctr", *map(str, args)], capture_output=True, text=True, timeout=600)


def write(tmp_path, name="r.yaml", cache=None, **sections):
    """``tiny_recipe`` saved as ``tmp_path``/``name``; its data encoded in ``cache`` when given
    (the folder this module's runs share: each data section is encoded once), else in ``tmp_path``."""
    if cache is not None:
        sections["data"] = {"cache_dir": str(cache), **sections.get("data", {})}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, **sections)))
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The data cache of this module's runs."""
    return tmp_path_factory.mktemp("cache")


def one_and_two(tmp: Path, cache: Path, **sections) -> tuple[dict, dict]:
    """``sections`` trained in this process (``tmp``/one) and on 2 processes (``tmp``/two), one
    thread each: the metrics of each."""
    sections["trainer"] = {"num_threads": 1, "progress_bar": False, **sections.get("trainer", {})}
    with kept_process_settings():  # a module fixture's run: the test's own restore comes after it
        one = train(load_recipe(write(tmp, cache=cache, **sections)), tmp / "one")
    recipe = write(tmp, "two.yaml", cache=cache, **sections)
    done = ctr("train", recipe, "--out", tmp / "two", "-o", "trainer.devices=2")
    assert done.returncode == 0, done.stderr[-3000:]
    return one, json.loads((tmp / "two" / "metrics.json").read_text())


def on_two_processes(sections: dict) -> dict:
    """A copy of ``sections`` with ``trainer.devices`` 2."""
    sections = copy.deepcopy(sections)
    sections.setdefault("trainer", {})["devices"] = 2
    return sections


def two_ranks_running(runs: list[dict], folder: Path) -> str:
    """Runs ``runs`` (each ``{"args": ctr's arguments, "replicas": a folder or None}``) in turn
    on 2 processes of ``tests.train.rank_runs``, each run in a process group on a port of its
    own: the ranks import torch and TorchRec once for all of them, not once a run. Their
    output is in ``folder``/rank-<r>.log; returns rank 0's."""
    sockets = [socket.socket() for _ in runs]
    for sock in sockets:  # all bound at once: a port each
        sock.bind(("127.0.0.1", 0))
    plan = [{"args": list(map(str, run["args"])), "port": sock.getsockname()[1],
             "replicas": str(run["replicas"]) if run.get("replicas") else None} for run, sock in zip(runs, sockets)]
    for sock in sockets:
        sock.close()
    (folder / "plan.json").write_text(json.dumps(plan))
    env = {key: value for key, value in os.environ.items() if key != LAUNCHER}
    env.update(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
    command = [sys.executable, "-m", "tests.train.rank_runs", folder / "plan.json"]
    logs = [(folder / f"rank-{rank}.log").open("w") for rank in range(2)]
    ranks = [subprocess.Popen(command, cwd=ROOT, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                              stdout=log, stderr=log) for rank, log in enumerate(logs)]
    code = wait_all(ranks)
    for log in logs:
        log.close()
    said = (folder / "rank-0.log").read_text()
    assert code == 0, said[-3000:]
    return said


def test_split_batches_parts_are_the_one_process_batches(tiny_prepared):
    """Rank r's part of every batch; the parts of all ranks, in rank order, are the batch."""
    folder, schema = tiny_prepared.split_dir("train"), tiny_prepared.schema
    whole = BatchLoader(folder, schema, 500, shuffle=True, seed=3, prefetch=0)
    parts = [BatchLoader(folder, schema, 500, shuffle=True, seed=3, prefetch=0, rank=r, world_size=2,
                         split_batches=True) for r in range(2)]
    seen = 0
    for index, (batch, *pieces) in enumerate(zip(whole, *parts, strict=True)):
        assert [p.size for p in pieces] == [batch.size // 2, batch.size - batch.size // 2]
        assert parts[0].batch_rows(index) == batch.size
        assert np.array_equal(np.concatenate([p.labels.numpy() for p in pieces]), batch.labels.numpy())
        assert np.array_equal(np.concatenate([p.dense.numpy() for p in pieces]), batch.dense.numpy())
        seen += batch.size
    assert seen == whole.total_rows


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"embedding": {"method": "hash", "dim": 8, "budget": 0.5}, "distributed": {"sharding": "table_wise"}},
         "distributed.sharding: table_wise needs plain tables"),
        ({"embedding": {"method": "hash", "dim": 8, "budget": 0.5},
          "train": {"embedding_optimizer": {"name": "sgd", "fused": True}}}, "train.embedding_optimizer.fused:"),
        ({"train": {"embedding_optimizer": {"name": "sparse_adam"}}}, "train.embedding_optimizer.name: sharded tables"),
        ({"train": {"batch_size": 511}}, "train.batch_size: 511"),
        ({"embedding": {"dim": 6}, "distributed": {"tables": {"C3": "column_wise"}}},  # FBGEMM's assertion, per rank
         "embedding.dim: 6 is not a multiple of 4, which TorchRec's column_wise tables need"),
        ({"distributed": {"sharding": "diagonal"}}, "distributed.sharding"),
        ({"trainer": {"compile": True}}, "trainer.compile: not available in a distributed run"),
        ({"trainer": {"precision": "bf16-mixed"}}, "trainer.precision: not available in a distributed run"),  # ignored
        ({"train": {"early_stop": {"monitor": "train/loss", "mode": "min"}}},
         "train.early_stop.monitor: a distributed run monitors a validation metric, not train/loss"),
    ],
)
def test_a_distributed_recipe_that_cannot_run_is_one_line_before_any_process(tmp_path, capsys, sections, message):
    sections.setdefault("trainer", {})["devices"] = 2
    code = main(["train", str(write(tmp_path, **sections)), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_more_processes_than_gpus_is_one_line_before_any_process(tmp_path, capsys, monkeypatch):
    """Process ``LOCAL_RANK`` takes GPU ``LOCAL_RANK``: on a machine of one GPU, rank 1 of
    ``trainer.devices: 2`` died on torch's "invalid device ordinal" traceback while rank 0
    waited for it in the process group. The launcher counts the GPUs through NVML
    (``device_count``): ``is_available`` would start the CUDA driver in it."""
    def starts_the_driver():
        raise AssertionError("the launcher called torch.cuda.is_available")

    monkeypatch.setattr(torch.cuda, "is_available", starts_the_driver)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    recipe = write(tmp_path, trainer={"devices": 2, "accelerator": "gpu"})
    code = main(["train", str(recipe), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == ("ctr: error: trainer.devices: 2 processes on this machine, one GPU each, but it has "
                                 "1 CUDA GPU; set trainer.devices to at most 1"), err
    assert not (tmp_path / "run").exists()
    code = main(["train", str(write(tmp_path, trainer={"devices": 2, "accelerator": "auto"})), "--out",
                 str(tmp_path / "run")])
    assert code == 2 and capsys.readouterr().err.strip().endswith("at most 1, or trainer.accelerator: cpu")


@pytest.mark.parametrize("cores", [1, 2])
def test_more_cpu_processes_than_cores_is_one_warning_of_the_launcher(tmp_path, caplog, monkeypatch, cores):
    """``trainer.devices: 64`` on 2 cores started 64 ranks that took minutes to meet: the
    launcher says so once, before it starts them (a warning: a test's one-core worker runs 2);
    the ranks, which check the recipe again, do not repeat it."""
    class Finished:
        def __init__(self, *args, **kwargs):
            pass

        def poll(self):
            return 0

        wait = poll

    monkeypatch.setattr(launch, "usable_cores", lambda: cores)
    monkeypatch.setattr(launch.subprocess, "Popen", Finished)
    recipe = load_recipe(write(tmp_path, trainer={"devices": 2, "accelerator": "cpu"}))
    with caplog.at_level(logging.WARNING, logger="ctr.train"):
        launch.check_distributed(recipe)  # as each rank does
        assert launch.spawn(["train"], recipe) == 0
    warned = [m for m in caplog.messages if "trainer.devices: 2 processes on the 1 CPU core this" in m]
    assert len(warned) == (cores == 1), caplog.messages


@pytest.mark.parametrize("fails", [False, True], ids=["finishes", "raises"])
def test_a_process_that_joined_a_group_exits_with_its_code_and_output_while_native_threads_run(tmp_path, fails):
    """A ``ctr`` process that joined a process group ends with main's exit code and its whole
    output (or, when main raises, the traceback and exit code 1) even though a thread is
    still inside torch when main returns, as the worker threads of the gloo group that DDP
    keeps alive can be: the interpreter's finalization would abort it ("terminate called
    without an active exception")."""
    recipe = write(tmp_path)
    script = ("import sys, threading, torch\n"
              "import ctr.cli\nfrom ctr.recipe import load_recipe\n"
              "from ctr.train.launch import process_group\n"
              f"with process_group(load_recipe({str(recipe)!r})):\n    pass\n"
              "def busy():\n    x = torch.randn(300, 300)\n    while True:\n        x @ x\n"
              "threading.Thread(target=busy, daemon=True).start()\n"
              "sys.argv = ['ctr', 'models']\n"
              + ("ctr.cli.main = lambda: 1 / 0\n" if fails else "")
              + "ctr.cli.entry()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    if fails:
        assert done.returncode == 1 and done.stderr.rstrip().endswith("ZeroDivisionError: division by zero"), done.stderr
    else:
        assert done.returncode == 0, done.stderr[-2000:]
        assert "optembed" in done.stdout and done.stdout.endswith("\n")


def test_a_rank_that_errs_first_leaves_rank_0_to_say_the_error():
    """Every rank meets a recipe's error and only rank 0 prints it: when another rank exited
    first, the launcher stopped rank 0 before its line (the run ended with code 2, silent)."""
    says = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.0); print('ctr: error: said'); exit(2)"],
                            stdout=subprocess.PIPE, text=True)
    quiet = subprocess.Popen([sys.executable, "-c", "exit(2)"])
    assert wait_all([says, quiet]) == 2
    assert says.returncode == 2 and says.stdout.read() == "ctr: error: said\n"


def test_a_process_killed_by_a_signal_stops_the_others_and_is_named(caplog):
    """``ctr train``'s launcher: a rank killed by a signal stops the other ranks, is logged
    with its signal, and gives the shell's exit code (128 + the signal), not a negative one
    that the shell would show as 250."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    aborted = subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGABRT)"])
    with caplog.at_level(logging.ERROR, logger="ctr.train"):
        assert wait_all([sleeper, aborted]) == 128 + signal.SIGABRT
    assert sleeper.returncode == -signal.SIGTERM
    assert "local rank 1 of 2 was killed by SIGABRT" in caplog.text


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie no longer does)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _processes_running(text: str) -> list[int]:
    """Pids of the processes whose command line holds ``text``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in stat.read_bytes().decode(errors="replace") and _alive(int(stat.parent.name)):
                found.append(int(stat.parent.name))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
@pytest.mark.parametrize("variable", ["CTR_LAUNCHER_PID", "CTR_STARTER_PID"])
def test_a_rank_ends_when_its_launcher_is_killed(tmp_path, variable):
    """A rank of ``ctr train``'s launcher, or a benchmark's ``ctr train``, ends (SIGTERM) when
    the process that started it dies, even by SIGKILL, instead of training on unseen (a rerun
    of the benchmark found it holding the cell's run directory)."""
    ready = tmp_path / "ready"
    rank = ("import pathlib, time; from ctr.train.launch import die_with_starter; die_with_starter(); "
            f"pathlib.Path({str(ready)!r}).touch(); time.sleep(120)")
    launcher = subprocess.Popen([sys.executable, "-c",
                                 "import os, subprocess, sys, time\n"
                                 f"child = subprocess.Popen([sys.executable, '-c', {rank!r}], "
                                 f"env={{**os.environ, {variable!r}: str(os.getpid())}})\n"
                                 "print(child.pid, flush=True)\ntime.sleep(120)\n"], stdout=subprocess.PIPE, text=True)
    child = int(launcher.stdout.readline())
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline:  # the rank has made its call
        time.sleep(0.2)
    assert ready.exists() and _alive(child)
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 20
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(child)


def _launcher_imports(*args):
    """What of Lightning, torch._dynamo and the training loop ``ctr train ARGS`` imported by
    the time it would start its ranks (``spawn`` stubbed: none is started)."""
    heavy = ("lightning", "torch._dynamo", "ctr.train.loop")
    script = ("import sys\nimport ctr.train.launch as launch\n"
              f"launch.spawn = lambda args, recipe: print('imported:', [m for m in {heavy!r} if m in sys.modules]) or 0\n"
              "from ctr.cli import main\n"
              f"sys.exit(main(['train', *{list(map(str, args))!r}]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    return done.stdout


def test_the_launcher_starts_its_ranks_without_importing_lightning(tmp_path):
    """``ctr train`` of 2 processes reads and checks the recipe and starts its ranks without
    importing Lightning, torch._dynamo or the training loop: seconds of imports that every
    rank waited for (each rank imports them itself). So does ``--resume`` of a 2-process run,
    which first checks its checkpoint folders (it imported them through ctr.train.stages)."""
    from tests.train.test_checkpoint_switch import saved_checkpoint

    recipe, run = write(tmp_path, trainer={"devices": 2}), tmp_path / "run"
    assert _launcher_imports(recipe, "--out", run) == "imported: []\n"
    resumed = tmp_path / "resumed"
    for name in ("last", "best"):
        saved_checkpoint(resumed / "checkpoints" / name)
    shutil.copy(recipe, resumed / "recipe.yaml")
    (resumed / "schema").mkdir()  # a started run's, written before its first checkpoint
    assert _launcher_imports("--resume", resumed) == "imported: []\n"


def test_a_rank_trains_without_importing_lightning(tmp_path):
    """A rank of a launched ``ctr train`` imported Lightning and its training loop (through
    ``ctr.train.runner``): seconds before every rank's start that its loop never used."""
    heavy = ("lightning", "ctr.train.loop", "ctr.train.task", "ctr.train.runner")
    script = ("import os, sys\nos.environ.update(WORLD_SIZE='2', RANK='0', LOCAL_RANK='0')\n"
              "import ctr.train.distributed as distributed\n"
              "def reached(recipe, out, resume):\n"
              f"    print('imported:', [m for m in {heavy!r} if m in sys.modules], flush=True)\n"
              "    os._exit(0)\n"
              "distributed.train_in_group = reached\n"
              "from ctr.cli import main\n"
              f"main(['train', {str(write(tmp_path, trainer={'devices': 2}))!r}, '--out', {str(tmp_path / 'run')!r}])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.stdout == "imported: []\n", done.stdout + done.stderr[-2000:]


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_its_ranks(tmp_path, cache):
    """A scheduler's SIGTERM to ``ctr train -o trainer.devices=2``: the ranks are stopped, not
    left training, and the launcher exits with 143 and the line of a one-process run, naming
    --resume of its run directory."""
    recipe = write(tmp_path, cache=cache, train={"epochs": 500, "early_stop": None},
                   trainer={"num_threads": 1, "devices": 2})
    run = tmp_path / "run"
    launcher = subprocess.Popen([sys.executable, "-m", "ctr", "train", str(recipe), "--out", str(run)],
                                stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "last").exists() and time.monotonic() < deadline:  # the ranks checkpointed
        time.sleep(0.5)
    assert len(_processes_running(str(run))) == 3
    launcher.terminate()
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "the 2 ranks were stopped" in err
    assert err.splitlines()[-1] == (f"ctr: terminated (SIGTERM); `ctr train --resume {run}` continues from its last "
                                    "checkpoint, if one was written")
    assert _processes_running(str(run)) == []


# The mixed plan's recipes: WARMED's lrs step by a warm-up and a cosine, STEPPED validates every 4 steps.
WARMED = {"data": {"rows": 6001},
          "train": {"epochs": 2, "early_stop": None, "eval_batch_size": 600,
                    "scheduler": {"name": "linear_warmup", "warmup_steps": 15},
                    "embedding_scheduler": {"name": "cosine", "epochs": 2}},
          "trainer": {"num_threads": 1, "progress_bar": False}}
STEPPED = {"distributed": MIXED, "train": {"epochs": 2, "early_stop": None, "eval_every_n_steps": 4},
           "trainer": {"num_threads": 1, "progress_bar": False}}


@pytest.fixture(scope="module")
def mixed_cuts(tmp_path_factory, cache):
    """Runs of the mixed plan trained by 2 launches of ranks that run several in turn, for the
    tests that read them: ``stepped/one`` (STEPPED, in this process), ``stepped/two`` (on 2
    processes), ``stepped/cut`` (cut by max_steps 8, then resumed as if killed after that
    checkpoint) and ``warmed/cut`` (WARMED on 2 processes, cut after its first epoch, then
    resumed as if the 2-epoch run had stopped there); ``cut1`` beside each cut is its copy
    before the resume. The folder, the metrics of ``stepped``'s one and two, and rank 0's
    output of the resumes."""
    tmp = tmp_path_factory.mktemp("mixed")
    stepped, warmed = tmp / "stepped", tmp / "warmed"
    for folder in (stepped, warmed):
        folder.mkdir()
    with kept_process_settings():  # a module fixture's run: the test's own restore comes after it
        one = train(load_recipe(write(stepped, cache=cache, **copy.deepcopy(STEPPED))), stepped / "one")
    recipe = write(stepped, "two.yaml", cache=cache, **on_two_processes(STEPPED))
    cut = write(warmed, "cut.yaml", cache=cache, distributed=MIXED,
                **on_two_processes({**WARMED, "train": {**WARMED["train"], "epochs": 1}}))
    two_ranks_running([{"args": ["train", recipe, "--out", stepped / "two"]},
                       {"args": ["train", recipe, "--out", stepped / "cut", "-o", "train.max_steps=8"]},
                       {"args": ["train", cut, "--out", warmed / "cut"]}], tmp)
    for run, edit in ((stepped, {"max_steps": None}), (warmed, {"epochs": 2})):
        saved = yaml.safe_load((run / "cut" / "recipe.yaml").read_text())
        saved["train"].update(edit)
        begun_with(run / "cut", saved)
        (run / "cut" / "metrics.json").unlink()
        shutil.copytree(run / "cut", run / "cut1")
    said = two_ranks_running([{"args": ["train", "--resume", run / "cut"]} for run in (stepped, warmed)], tmp)
    return tmp, one, json.loads((stepped / "two" / "metrics.json").read_text()), said


@pytest.mark.slow
def test_two_processes_match_one_resume_and_evaluate_in_one(tmp_path, caplog, cache, mixed_cuts):
    """A mixed plan (table-wise, column-wise over both ranks, data-parallel) on 2 gloo
    processes: the loss curve, validation and test AUC of the 1-process run on the same global
    batch, its CSV log's header and float32 values, and its log's progress lines (the
    distributed loop printed one per 100 steps only, and no run directory); a run resumed
    from its DCP checkpoint ends the same, on 2 processes or on 1; 1 process evaluates it
    alike. Its lrs step as one process's: a per-step warm-up of the dense lr and a cosine over
    epochs of the sharded tables' fused lr (FBGEMM's), every logged lr equal. Its splits end
    in batches that do not halve (as in
    test_sharded_tables_train_and_evaluate_on_batches_that_split_unevenly): with no row-wise
    table, TorchRec's all-to-alls take parts of different sizes, and the steps and metrics
    are still one process's. A resume that makes a table-wise table data-parallel (``auto``
    may plan so on another world size) is one line: the checkpoint's optimizers.pt holds no
    state for it, which torch's ``load_state_dict`` met with a ValueError traceback on every rank."""
    sections = copy.deepcopy(WARMED)
    with caplog.at_level(logging.INFO, logger="ctr"):
        one = train(load_recipe(write(tmp_path, cache=cache, **sections)), tmp_path / "one")

    recipe = write(tmp_path, "two.yaml", cache=cache, distributed=MIXED, **sections)
    done = ctr("train", recipe, "--out", tmp_path / "two", "-o", "trainer.devices=2")
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["sharding"]["C3"] == "column_wise on 0,1" and two["sharding"]["C1"] == "data_parallel on 0,1"
    assert two["sharding"]["C2"].startswith("table_wise on ")
    assert two["steps"] == one["steps"] == 20  # each epoch's last batch of 177 rows trained, as in one process
    for split in ("valid", "test"):  # measured within 2e-9 of one process (a row counted twice moves them ~1e-4)
        for metric in ("auc", "logloss"):
            assert abs(two[split][metric] - one[split][metric]) < 1e-6, (split, metric)
    progress_one, progress_two = _progress_lines(caplog.text), _progress_lines(done.stderr)
    assert [line[:4] for line in progress_two] == [line[:4] for line in progress_one] and progress_one
    assert np.allclose([line[4] for line in progress_two], [line[4] for line in progress_one], atol=2e-5, rtol=0)
    assert f"run directory: {tmp_path / 'two'} (metrics.json, " in done.stderr
    for column in ("train/loss", "valid/auc", "lr/dense", "lr/embedding"):
        curve_one, curve_two = (rows_of(tmp_path / run / "logs" / "metrics.csv", column) for run in ("one", "two"))
        assert [s for s, _ in curve_two] == [s for s, _ in curve_one] and curve_one
        assert np.allclose([v for _, v in curve_two], [v for _, v in curve_one], atol=1e-5, rtol=0), column
    lrs = [v for _, v in rows_of(tmp_path / "two" / "logs" / "metrics.csv", "lr/embedding")]
    assert lrs[-1] < lrs[0]  # the cosine lowered it
    logs = [(tmp_path / run / "logs" / "metrics.csv").read_text().splitlines() for run in ("one", "two")]
    assert logs[1][0] == logs[0][0] and len(logs[1]) == len(logs[0])
    values = [float(v) for line in logs[1][1:] for v in line.split(",")[1:] if v and "." in v]
    assert values and [float(np.float32(v)) for v in values] == values  # float32 values, as Lightning logs them

    evaluated = evaluate(tmp_path / "two")
    assert abs(evaluated["auc"] - two["test"]["auc"]) < 1e-6 and abs(evaluated["auc"] - one["test"]["auc"]) < 1e-5

    ran = mixed_cuts[0] / "warmed"  # its cut (a run of the recipe cut after its first epoch), resumed on 2 processes
    shutil.copytree(ran / "cut1", tmp_path / "cut1")
    for rank in (0, 1):
        saved = torch.load(tmp_path / "cut1" / "checkpoints" / "last" / f"random-{rank}.pt", weights_only=False)
        assert {"python", "numpy", "torch"} <= saved.keys()
    assert run_ctr("train", "--resume", tmp_path / "cut1", "-o", "trainer.devices=1").returncode == 0  # 1 process
    for run, world in ((ran / "cut", 2), (tmp_path / "cut1", 1)):
        again = json.loads((run / "metrics.json").read_text())
        assert again["steps"] == two["steps"] and again["world_size"] == world
        for split in ("valid", "test"):
            assert again[split] == pytest.approx(two[split], abs=1e-6, rel=0)

    saved = yaml.safe_load((tmp_path / "two" / "recipe.yaml").read_text())
    assert saved["distributed"]["tables"].get("C2") is None and two["sharding"]["C2"].startswith("table_wise")
    saved["train"]["epochs"] = 3
    saved["distributed"]["tables"]["C2"] = "data_parallel"
    begun_with(tmp_path / "two", saved)
    (tmp_path / "two" / "metrics.json").unlink()
    done = run_ctr("train", "--resume", tmp_path / "two", "-o", "trainer.devices=1")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "checkpoints/last: its optimizers do not fit this run's: a table is data-parallel here and sharded " \
        "there" in done.stderr.strip().splitlines()[-1]  # after the run's log lines: refused as its ranks load


@pytest.mark.slow
def test_validation_every_n_steps_checkpoints_mid_epoch_and_resumes_there(mixed_cuts):
    """train.eval_every_n_steps 4 on 10 batches an epoch: validations at the 4th and 8th
    batch of each epoch and at the run's last step, as one process does; a run stopped after its mid-epoch
    checkpoint at step 8 resumes there and ends as the uninterrupted run (its log also holds
    the loss of step 8, where max_steps ended the cut run, logged as one process logs it)."""
    tmp, one, two, said = mixed_cuts
    ran = tmp / "stepped"
    assert abs(two["test"]["auc"] - one["test"]["auc"]) < 1e-5
    curves = {run: rows_of(ran / run / "logs" / "metrics.csv", "valid/auc") for run in ("one", "two")}
    assert [s for s, _ in curves["two"]] == [s for s, _ in curves["one"]] == [3, 7, 13, 17, 19]
    assert np.allclose([v for _, v in curves["two"]], [v for _, v in curves["one"]], atol=1e-5, rtol=0)

    assert json.loads((ran / "cut1" / "checkpoints" / "last" / "ctr.json").read_text())["batches"] == 8
    assert f"resuming from {ran / 'cut' / 'checkpoints' / 'last'}, written at step 8" in said
    again = json.loads((ran / "cut" / "metrics.json").read_text())
    assert again["steps"] == two["steps"] and again["test"] == pytest.approx(two["test"], abs=1e-6, rel=0)
    assert rows_of(ran / "cut1" / "logs" / "metrics.csv", "train/loss")[-1][0] == 7  # step 8's row (logged at 7)
    for column in ("valid/auc", "train/loss"):
        resumed_curve, whole = (rows_of(ran / run / "logs" / "metrics.csv", column) for run in ("cut", "two"))
        resumed_curve = [(s, v) for s, v in resumed_curve if (s, column) != (7, "train/loss")]
        assert [s for s, _ in resumed_curve] == [s for s, _ in whole]
        assert np.allclose([v for _, v in resumed_curve], [v for _, v in whole], atol=1e-6, rtol=0)


def _progress_lines(log_text: str) -> list[tuple[int, int, int, int, float]]:
    """(epoch, step, batch, batches per epoch, loss) of each progress line of a run's log."""
    found = re.findall(r"epoch (\d+) step (\d+) \((\d+)/(\d+) of the epoch\): loss ([\d.]+), \d+ samples/s", log_text)
    return [(*map(int, groups[:4]), float(groups[4])) for groups in found]


UNEVEN = {"data": {"rows": 6001}, "train": {"eval_batch_size": 600},
          "trainer": {"num_threads": 1, "progress_bar": False}}


@pytest.fixture(scope="module")
def uneven_one(tmp_path_factory, cache):
    """The metrics of ``UNEVEN`` trained in one process, which every plan of it is checked against."""
    tmp = tmp_path_factory.mktemp("uneven")
    return train(load_recipe(write(tmp, cache=cache, **copy.deepcopy(UNEVEN))), tmp / "one")


# Plans written without the planner: every table row-wise, and row-wise with the others (MIXED, planned, with no
# row-wise table, trains on these splits in test_two_processes_match_one_resume_and_evaluate_in_one).
ROW_WISE = {"row_wise": {"sharding": "row_wise"},
            "row_wise_with_the_others": {"sharding": "row_wise",
                                         "tables": {"C1": "table_wise", "C2": "column_wise", "C3": "data_parallel"}}}


@pytest.mark.slow
def test_sharded_tables_train_and_evaluate_on_batches_that_split_unevenly(tmp_path, cache, uneven_one):
    """2 processes on splits whose last batches do not halve: 4,785 train rows end in a batch
    of 177 (88 and 89 rows a rank), 615 valid rows in one of 15 (7 and 8), 601 test rows in
    one of a single row (rank 0's part is empty). TorchRec's row-wise backward all-gathers
    the ranks' pooled gradients, which gloo refuses for parts of different sizes (the run
    stopped at its last batch): the short parts are padded with empty bags up to TorchRec
    and the padding is cut from its output, so the run takes one process's steps and ends
    with its weights, and the metrics count each real row once; 1 process evaluates it alike.
    (One launch trains the plans of ``ROW_WISE`` in turn.)"""
    one, runs = uneven_one, []
    for name, distributed in ROW_WISE.items():
        (tmp_path / name).mkdir()
        sections = on_two_processes({**UNEVEN, "distributed": distributed})
        runs.append({"args": ["train", write(tmp_path / name, "two.yaml", cache=cache, **sections),
                              "--out", tmp_path / name / "two"]})
    two_ranks_running(runs, tmp_path)
    for name, distributed in ROW_WISE.items():
        two = json.loads((tmp_path / name / "two" / "metrics.json").read_text())
        row_wise = [table for table, how in two["sharding"].items() if how == "row_wise on 0,1"]
        assert len(row_wise) == 26 - len(distributed.get("tables", {})), name
        assert two["steps"] == one["steps"] == 10, name  # the last batch of 177 rows trained, as in one process
        for split in ("valid", "test"):  # measured within 2e-9 of one process (a row counted twice moves them ~1e-4)
            for metric in ("auc", "logloss"):
                assert abs(two[split][metric] - one[split][metric]) < 1e-6, (name, split, metric)
        assert abs(evaluate(tmp_path / name / "two")["auc"] - one["test"]["auc"]) < 1e-5, name


def test_a_part_padded_for_torchrec_pools_and_backpropagates_as_the_part():
    """``padded_kjt``: the padding samples hold empty bags (no id, pooled to zero); the real
    samples pool, and give the tables gradients, as without padding."""
    pytest.importorskip("torchrec")
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    from ctr.batch import JaggedFeatures
    from ctr.train.sharded import padded_kjt

    torch.manual_seed(0)
    ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name=f"t{i}", embedding_dim=4, num_embeddings=10,
                                                            feature_names=[f"f{i}"]) for i in range(2)])
    sparse = JaggedFeatures.from_lengths(["f0", "f1"], torch.tensor([1, 2, 3, 4, 5, 6]),
                                         torch.tensor([1, 0, 2, 2, 1, 0]), torch.rand(6))  # 3 samples
    padded = padded_kjt(sparse, 5)
    assert padded.stride() == 5 and padded.lengths().tolist() == [1, 0, 2, 0, 0, 2, 1, 0, 0, 0]
    outputs = []
    for kjt in (sparse.to_kjt(), padded):
        ebc.zero_grad()
        pooled = ebc(kjt).to_dict()
        torch.stack([pooled[f][:3] for f in ("f0", "f1")]).square().sum().backward()
        outputs.append(([pooled[f].detach() for f in ("f0", "f1")], [p.grad.clone() for p in ebc.parameters()]))
    (whole, grads), (cut, padded_grads) = outputs
    for feature in range(2):
        assert torch.equal(cut[feature][:3], whole[feature]) and not cut[feature][3:].any()
    assert all(torch.equal(a, b) for a, b in zip(grads, padded_grads, strict=True))


# |test AUC of 2 processes − 1 process| allowed: int8, int16, alpt and mgqe measured identical (rank 0 rounds the
# whole batch's update with the noise one process draws); dpq measured 0.00075 apart (its BatchNorm normalises each
# rank's responses with that rank's statistics; without it the AUC is identical).
REPLICATED = {"int8": 1e-6, "int16": 1e-6, "alpt": 1e-6, "dpq": 2e-3, "mgqe": 1e-6}
SETTINGS = {"mgqe": {"frequent_centroids": 16, "rare_centroids": 4}}  # codebooks that fit 0.5


@pytest.mark.slow
def test_methods_writing_outside_the_optimizer_keep_their_replicas_equal(tmp_path, cache):
    """int8, int16, alpt (rows updated in the backward), dpq, mgqe (codes written by a lookup)
    on 2 processes (one launch runs them in turn): every rank's copy of what they write ends
    bitwise equal, and the test AUC is the 1-process run's within the measured tolerance."""
    ones, runs = {}, []
    for method in REPLICATED:
        tmp = tmp_path / method
        tmp.mkdir()
        embedding = {"method": method, "dim": 8, "budget": 0.5, **SETTINGS.get(method, {})}
        sections = {"embedding": embedding, "trainer": {"num_threads": 1}}
        ones[method] = train(load_recipe(write(tmp, cache=cache, **sections)), tmp / "one")
        runs.append({"args": ["train", write(tmp, "two.yaml", cache=cache, **on_two_processes(sections)),
                              "--out", tmp / "two"], "replicas": tmp})
    two_ranks_running(runs, tmp_path)
    for method, one in ones.items():
        copies = [torch.load(tmp_path / method / f"rank-{rank}.pt") for rank in range(2)]
        assert list(copies[0]) == list(copies[1]) and copies[0], method
        assert all(torch.equal(copies[0][name], copies[1][name]) for name in copies[0]), method
        two = json.loads((tmp_path / method / "two" / "metrics.json").read_text())
        assert abs(two["test"]["auc"] - one["test"]["auc"]) <= REPLICATED[method], method


def test_a_checkpoint_restores_every_generator_of_its_world_size_and_an_earlier_ctrs_torch_one(tmp_path):
    """Dropout on a GPU draws from the CUDA generator, sampling in python or numpy from theirs:
    a checkpoint keeps each rank's every generator (``random-<rank>.pt``), restored on its own
    world size only; one of an earlier ctr (``rng-<rank>.pt``: torch's CPU one) still resumes."""
    import random

    from ctr.train.checkpoints import restore_checkpoint_random
    from ctr.train.generators import save_random
    from ctr.train.placement import Placement

    rank0_of = lambda world: Placement(rank=0, world_size=world, device=torch.device("cpu"))
    draws = lambda: (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    save_random(tmp_path, rank=0, world_size=2)
    saved_draws = draws()
    restore_checkpoint_random(tmp_path, rank0_of(1), saved_world_size=2)
    assert draws() != saved_draws
    restore_checkpoint_random(tmp_path, rank0_of(2), saved_world_size=2)
    assert draws() == saved_draws

    earlier = tmp_path / "earlier"
    earlier.mkdir()
    torch.manual_seed(2)
    torch.save(torch.get_rng_state(), earlier / "rng-0.pt")
    after = torch.rand(1)
    restore_checkpoint_random(earlier, rank0_of(2), saved_world_size=2)
    assert torch.equal(torch.rand(1), after)


def test_resume_takes_only_the_world_size_as_override(tmp_path, capsys):
    code = main(["train", "--resume", str(tmp_path / "run"), "-o", "train.epochs=3"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "-o only for trainer.devices or trainer.num_nodes" in err


CLIMB = [0.70, 0.705, 0.72, 0.719, 0.7205, 0.74, 0.74, 0.73, 0.71, 0.75]
FLOAT32_TIE = [0.70, 0.70 + 1e-9, 0.70 + 2e-9]  # better in float64 only: Lightning compares float32


@pytest.mark.parametrize("mode, min_delta, patience, values", [
    ("max", 0.0, 2, CLIMB), ("max", 0.01, 1, CLIMB), ("min", 0.005, 2, CLIMB), ("max", 0.0, 1, FLOAT32_TIE),
    ("min", 0.0, 2, FLOAT32_TIE),
])
def test_early_stopping_follows_lightnings_rule(mode, min_delta, patience, values):
    """The distributed loop's early stopping stops at the validation Lightning's would."""
    import torch
    from lightning.pytorch.callbacks import EarlyStopping

    from ctr.recipe import EarlyStopConfig
    from ctr.train.checkpoints import TrainState

    if mode == "min":
        values = [1 - v for v in values]
    lightning = EarlyStopping(monitor="valid/auc", mode=mode, patience=patience, min_delta=min_delta)
    monitor = "valid/logloss" if mode == "min" else "valid/auc"
    ours, stop = TrainState(), EarlyStopConfig(monitor=monitor, mode=mode, patience=patience, min_delta=min_delta)
    for value in values:
        should_stop, _ = lightning._evaluate_stopping_criteria(torch.tensor(value))
        ours.update_patience(value, mode, stop)
        assert ours.stopped == should_stop
        if should_stop:
            break
    assert ours.stopped  # each case stops before the values run out


@pytest.mark.parametrize("mode", ["max", "min"])
def test_the_best_checkpoint_follows_lightnings_float32_compare(mode):
    """A value better than the best in float64 only is no gain for Lightning's checkpoint:
    the distributed loop's best is chosen by the same compare."""
    from ctr.train.watch import beats

    step = 1e-9 if mode == "max" else -1e-9
    assert not beats(0.7 + step, 0.7, mode) and beats(0.7 + 1e6 * step, 0.7, mode)


def test_a_group_of_one_process_leaves_no_address_behind(tmp_path, monkeypatch):
    """A distributed run trained in one process (resumed on 1, say) set MASTER_ADDR and
    MASTER_PORT for its group of one and left them: a launch this process started later gave
    its ranks that stale port. They are set for the group's life only; given ones are kept."""
    from ctr.train.launch import process_group

    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    recipe = load_recipe(write(tmp_path))
    with process_group(recipe) as place:
        assert place.world_size == 1 and os.environ["MASTER_ADDR"] == "127.0.0.1" and "MASTER_PORT" in os.environ
    assert "MASTER_ADDR" not in os.environ and "MASTER_PORT" not in os.environ
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with process_group(recipe):
        assert "MASTER_PORT" in os.environ
    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and "MASTER_PORT" not in os.environ


def test_a_checkpoint_of_an_older_ctr_that_counted_its_validations_resumes():
    """An older ctr kept the validations done in ``ctr.json`` (to validate a run that max_steps
    cut before its first); every cut now validates, and the count is ignored."""
    from dataclasses import asdict

    from ctr.train.checkpoints import TrainState

    saved = {**asdict(TrainState(epoch=1, best=0.71)), "validations": 3}
    assert TrainState.from_saved(saved) == TrainState(epoch=1, best=0.71)


def test_ctr_plan_follows_the_distributed_section(tmp_path, tiny_prepared):
    from ctr.recipe import recipe_from_dict
    from ctr.train.plan import plan_tables

    recipe = recipe_from_dict(tiny_recipe(tmp_path, distributed=MIXED))
    plan = {t.name: t for t in plan_tables(recipe, tiny_prepared.schema, 2, None).tables}
    assert plan["C1"].sharding == "data_parallel" and plan["C3"].sharding == "column_wise"
    assert sorted(rank for rank, _, cols in plan["C3"].shards) == [0, 1]
    assert sum(cols for _, _, cols in plan["C3"].shards) == 8
    assert all(t.sharding == "table_wise" for name, t in plan.items() if name not in ("C1", "C3"))


MULTI_STAGE = ("autosrh", "dedup", "deeplight")


@pytest.fixture(scope="module")
def staged_runs(tmp_path_factory, cache):
    """Multi-stage runs trained on 2 processes by one launch of ranks that run them in turn,
    and resumed by another: for each of ``MULTI_STAGE``, ``<method>/one`` (in this process),
    ``<method>/two`` and ``<method>/cut``, its copy as if killed before its last stage's first
    checkpoint, resumed; ``optembed/whole`` (its retrain stopped early) and ``optembed/cut``,
    its copy as if killed in the final evaluation, resumed. The folder and the 1-process
    metrics of each method."""
    from tests.train.test_stages import OPTEMBED

    tmp, ones, runs = tmp_path_factory.mktemp("staged"), {}, []
    for method in MULTI_STAGE:
        (tmp / method).mkdir()
        sections = {"embedding": {"method": method, "dim": 8, "budget": 0.5}, "train": {"early_stop": None},
                    "trainer": {"num_threads": 1, "progress_bar": False}}
        with kept_process_settings():  # a module fixture's run: the test's own restore comes after it
            ones[method] = train(load_recipe(write(tmp / method, cache=cache, **sections)), tmp / method / "one")
        runs.append({"args": ["train", write(tmp / method, "two.yaml", cache=cache, **on_two_processes(sections)),
                              "--out", tmp / method / "two"]})
    (tmp / "optembed").mkdir()
    stop = {"monitor": "valid/auc", "mode": "max", "patience": 1, "min_delta": 0.5}  # the retrain stops early
    recipe = write(tmp / "optembed", cache=cache, embedding={**OPTEMBED, "stages": {"supernet": {"epochs": 1}}},
                   train={"epochs": 4, "early_stop": stop}, trainer={"devices": 2, "progress_bar": False})
    two_ranks_running([*runs, {"args": ["train", recipe, "--out", tmp / "optembed" / "whole"]}], tmp)
    for method in MULTI_STAGE:
        cut = shutil.copytree(tmp / method / "two", tmp / method / "cut")
        record = json.loads((cut / "stages" / "progress.json").read_text())
        last = record["finished"].pop()
        del record["seconds"][last]
        (cut / "stages" / "progress.json").write_text(json.dumps(record))  # killed before its first checkpoint
        shutil.rmtree(cut / "checkpoints")
        (cut / "metrics.json").unlink()
    shutil.copytree(tmp / "optembed" / "whole", tmp / "optembed" / "cut")
    (tmp / "optembed" / "cut" / "metrics.json").unlink()
    two_ranks_running([{"args": ["train", "--resume", tmp / name / "cut"]} for name in (*MULTI_STAGE, "optembed")],
                      tmp)
    return tmp, ones


@pytest.mark.slow
def test_multi_stage_methods_run_their_stages_on_two_processes_as_on_one(staged_runs):
    """autosrh: a bi-level search (architecture gradients averaged over the ranks), a pruning
    procedure and a rewound retraining; dedup: a procedure scored on validation; deeplight:
    pruning on a step schedule. Each stage's output, the test AUC and a 1-process evaluation
    equal the 1-process run's; a run resumed before its last stage ends the same."""
    tmp, ones = staged_runs
    for method, one in ones.items():
        ran = tmp / method
        two = json.loads((ran / "two" / "metrics.json").read_text())
        assert abs(two["test"]["auc"] - one["test"]["auc"]) < 1e-5, method
        assert set(two["stage_seconds"]) == set(one["stage_seconds"]), method
        for folder in sorted((ran / "one" / "stages").glob("*-*")):
            ours = torch.load(ran / "two" / "stages" / folder.name / "output.pt")
            for key, value in torch.load(folder / "output.pt").items():
                assert torch.allclose(ours[key].float(), value.float(), atol=1e-5), (method, folder.name, key)
        assert abs(evaluate(ran / "two")["auc"] - two["test"]["auc"]) < 1e-6, method
        again = json.loads((ran / "cut" / "metrics.json").read_text())
        assert again["test"] == pytest.approx(two["test"], abs=1e-6, rel=0), method


@pytest.mark.slow
def test_a_two_process_multi_stage_run_killed_after_its_stages_resumes_to_the_same_end(staged_runs):
    """Every stage finished before the kill (in the final evaluation): the resume restores
    them all, places the last stage's network from its checkpoints and ends as the whole
    run did (it failed: no stage had trained in this process), its early-stopped epoch counted."""
    ran = staged_runs[0] / "optembed"
    whole, cut = (json.loads((ran / run / "metrics.json").read_text()) for run in ("whole", "cut"))
    timing = ("inference_seconds",)
    assert {k: v for k, v in cut.items() if k not in timing} == {k: v for k, v in whole.items() if k not in timing}
    assert whole["epochs"] == 2


def test_ranks_started_by_torchrun_are_refused_a_run_directory_another_process_holds(tmp_path):
    """torchrun's ranks have no ctr launcher to hold the run directory: rank 0 takes the
    lock, and every rank stops with its refusal (none waits on the others)."""
    run = tmp_path / "run"
    command, env = _torchrun_command(write(tmp_path, trainer={"devices": 2}), run)
    with RunDir(run).exclusive():
        ends = _torchrun_ranks(command, env)
    assert [code for code, _ in ends] == [2, 2], ends
    assert f"{run}: another ctr process is training in this run directory" in ends[0][1], ends[0][1]
    assert "Traceback" not in ends[1][1], ends[1][1]  # rank 1 meets the same error and leaves the line to rank 0
    assert not run.exists()


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs sysfs, where no process can make a file")
def test_ranks_started_by_torchrun_stop_together_when_the_lock_cannot_be_made(tmp_path):
    """Rank 0 cannot make the lock file (sysfs refuses even root): every rank stops with
    the one line, none waits for the others."""
    run = Path(f"/sys/ctr-run-{os.getpid()}")
    command, env = _torchrun_command(write(tmp_path, trainer={"devices": 2}), run)
    ends = _torchrun_ranks(command, env)
    assert [code for code, _ in ends] == [2, 2], ends
    assert ends[0][1].strip().splitlines()[-1] == f"ctr: error: {run}: cannot be written (permission denied)", ends[0][1]
    assert "Traceback" not in ends[1][1], ends[1][1]


def _torchrun_command(recipe: Path, run: Path) -> tuple[list[str], dict[str, str]]:
    """``ctr train recipe --out run`` and the environment torchrun gives ranks (no ctr launcher)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != LAUNCHER}
    env.update(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return [sys.executable, "-m", "ctr", "train", str(recipe), "--out", str(run)], env


def _torchrun_ranks(command: list[str], env: dict[str, str]) -> list[tuple[int, str]]:
    """Runs ``command`` as ranks 0 and 1 of a group, as torchrun starts them: (code, stderr) of each."""
    ranks = [subprocess.Popen(command, cwd=ROOT, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    said = [rank.communicate(timeout=300)[1] for rank in ranks]  # read while they run: no full pipe blocks one
    return [(rank.returncode, err) for rank, err in zip(ranks, said)]


def test_a_loss_that_is_not_finite_stops_every_rank_naming_the_step(tmp_path, cache):
    """As one process does: the ranks read their loss checks together (every step on the
    CPU), stop at the first non-finite one and write no checkpoint of diverged weights (a
    2-process run used to train on, validate NaN scores and finish)."""
    recipe = write(tmp_path, cache=cache, embedding={"init_std": 1e30}, trainer={"devices": 2, "progress_bar": False})
    done = ctr("train", recipe, "--out", tmp_path / "run")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "ctr: error: training: the loss is not finite at step 1; stopped at step 1, the last good" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "checkpoints" / "best").exists()


# Runs cut by train.max_steps, by name: "plateau" in its 3rd epoch, after the validations at the ends of the first two
# (a hash method's data-parallel tables, a plateau schedule, which lowers the lrs at the second); "rank_1_unsharded"
# in its 1st epoch, before any validation (one table-wise table, on rank 0, the others data-parallel).
CUTS = {
    "plateau": {"embedding": {"method": "hash", "dim": 8, "budget": 0.5},
                "train": {"epochs": 3, "max_steps": 25, "early_stop": None,
                          "scheduler": {"name": "plateau", "patience": 0, "min_delta": 1.0, "factor": 0.5}}},
    "rank_1_unsharded": {"distributed": {"sharding": "data_parallel", "tables": {"C1": "table_wise"}},
                         "train": {"epochs": 3, "max_steps": 5}},
}


@pytest.fixture(scope="module")
def cut_runs(tmp_path_factory, cache):
    """The ``CUTS`` recipes trained in this process and on 2 processes (one launch trains both
    in turn), shared by the tests that read them: by name, its folder (runs ``one`` and ``two``
    in it, which a test copies before changing them) and the metrics of each."""
    tmp, ones, runs = tmp_path_factory.mktemp("cuts"), {}, []
    for name, sections in CUTS.items():
        (tmp / name).mkdir()
        sections = {**copy.deepcopy(sections), "trainer": {"num_threads": 1, "progress_bar": False}}
        with kept_process_settings():  # a module fixture's run: the test's own restore comes after it
            ones[name] = train(load_recipe(write(tmp / name, cache=cache, **sections)), tmp / name / "one")
        runs.append({"args": ["train", write(tmp / name, "two.yaml", cache=cache, **on_two_processes(sections)),
                              "--out", tmp / name / "two"]})
    two_ranks_running(runs, tmp)
    return {name: (tmp / name, one, json.loads((tmp / name / "two" / "metrics.json").read_text()))
            for name, one in ones.items()}


@pytest.mark.slow
def test_two_processes_match_one_when_rank_1_holds_no_sharded_table(cut_runs):
    """One table-wise table, the others data-parallel (the run that max_steps cuts before its
    first validation in test_max_steps_ends_two_processes_as_it_ends_one). (A hash method's
    data-parallel tables, their sparse gradients averaged by ctr, train in
    test_learning_rate_schedules_step_two_processes_as_one.)"""
    ran, one, two = cut_runs["rank_1_unsharded"]
    assert abs(two["test"]["auc"] - one["test"]["auc"]) < 1e-5
    assert abs(evaluate(ran / "two")["auc"] - one["test"]["auc"]) < 1e-5


@pytest.mark.slow
def test_learning_rate_schedules_step_two_processes_as_one(cut_runs):
    """A plateau schedule of a data-parallel run (a hash method's tables, their sparse gradients
    averaged by ctr; the run that max_steps cuts in its 3rd epoch in
    test_max_steps_ends_two_processes_as_it_ends_one): every logged lr, the loss curve and the
    test AUC equal one process's; 1 process evaluates it alike. (A per-step warm-up of the dense
    lr and a cosine over epochs of the sharded tables' fused lr step in
    test_two_processes_match_one_resume_and_evaluate_in_one.)"""
    ran, one, two = cut_runs["plateau"]
    for column in ("lr/dense", "lr/embedding", "train/loss"):
        curve_one, curve_two = (rows_of(ran / run / "logs" / "metrics.csv", column) for run in ("one", "two"))
        assert [s for s, _ in curve_two] == [s for s, _ in curve_one] and curve_one
        assert np.allclose([v for _, v in curve_two], [v for _, v in curve_one], atol=1e-5, rtol=0), column
    lrs = [v for _, v in rows_of(ran / "two" / "logs" / "metrics.csv", "lr/embedding")]
    assert lrs[-1] < lrs[0]  # the schedule lowered it
    assert abs(two["test"]["auc"] - one["test"]["auc"]) < 1e-5
    assert abs(evaluate(ran / "two")["auc"] - one["test"]["auc"]) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("cut, max_steps, validated_at, epochs",
                         [("plateau", 25, [9, 19, 24], 3), ("rank_1_unsharded", 5, [4], 1)])
def test_max_steps_ends_two_processes_as_it_ends_one(tmp_path, caplog, cut_runs, cut, max_steps, validated_at, epochs):
    """max_steps cutting an epoch: a validation there, logged, after those at the epochs' ends
    (Lightning's own rule validated none there, and the distributed loop only when none ran
    before: the cut epoch's steps were never validated), the same best checkpoint and test
    metrics, the cut epoch counted in ``epochs``. Without its metrics.json, the run evaluates
    from its best checkpoint: eval, predict and export looked for ``checkpoints/best.ckpt``,
    which a distributed run never writes (its ``checkpoints/best`` folder was not found)."""
    ran, one, two = cut_runs[cut]
    logs = [ran / run / "logs" / "metrics.csv" for run in ("one", "two")]
    validated = [rows_of(log, "valid/auc") for log in logs]
    assert [s for s, _ in validated[0]] == [s for s, _ in validated[1]] == validated_at
    assert [v for _, v in validated[1]] == pytest.approx([v for _, v in validated[0]], abs=1e-5)
    assert (two["steps"], two["epochs"]) == (one["steps"], one["epochs"]) == (max_steps, epochs)
    assert two["test"]["auc"] == pytest.approx(one["test"]["auc"], abs=1e-5)
    assert two["inference_seconds"] > 0  # ctr bench compression reads it
    shutil.copytree(ran / "two", tmp_path / "two")
    (tmp_path / "two" / "metrics.json").unlink()
    caplog.set_level(logging.WARNING, logger="ctr.train")
    assert evaluate(tmp_path / "two")["auc"] == pytest.approx(two["test"]["auc"], abs=1e-6)
    assert any("not finished" in m and "checkpoints/best" in m for m in caplog.messages)


# Tables all table-wise, stepped by SGD; early stopping at the validation of step 8 (of 10 batches an epoch).
EARLY_SGD = {"distributed": {"sharding": "table_wise"},
             "train": {"epochs": 2, "eval_every_n_steps": 4, "embedding_optimizer": {"name": "sgd", "lr": 0.1},
                       "early_stop": {"monitor": "valid/auc", "patience": 1, "min_delta": 1.0}}}


@pytest.fixture(scope="module")
def early_sgd(tmp_path_factory, cache):
    """``one_and_two`` of ``EARLY_SGD``, trained once for the tests that read it: its folder
    (runs ``one`` and ``two``, which a test copies before changing them) and the metrics."""
    tmp = tmp_path_factory.mktemp("early_sgd")
    return (tmp, *one_and_two(tmp, cache, **copy.deepcopy(EARLY_SGD)))


@pytest.mark.slow
def test_sharded_tables_stepped_by_sgd_checkpoint_and_resume(tmp_path, caplog, early_sgd):
    """SGD keeps no optimizer state for its sharded tables: the checkpoint has no
    embedding_optimizer entry, and loading best (or resuming last) must not ask for one
    (the criteo recipe on 2 processes failed after training). A last checkpoint without its
    .metadata is refused naming it, not trained over. (The run is that of
    test_early_stopping_inside_an_epoch_logs_its_lrs_as_one_process_does.)"""
    ran, _, whole = early_sgd
    shutil.copytree(ran / "two", tmp_path / "run")
    assert all(how.startswith("table_wise") for how in whole["sharding"].values())
    (tmp_path / "run" / "metrics.json").unlink()
    shutil.copytree(tmp_path / "run", tmp_path / "cut")
    (tmp_path / "cut" / "checkpoints" / "last" / ".metadata").unlink()  # resumed from step 0 on 2 processes
    caplog.set_level(logging.INFO, logger="ctr")
    done = run_ctr("train", "--resume", tmp_path / "cut", "-o", "trainer.devices=1")  # sought last.ckpt
    code, err = done.returncode, done.stderr.strip()
    last = tmp_path / "cut" / "checkpoints" / "last"
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"ctr: error: {last}: not a whole distributed checkpoint (no .metadata)"), err
    assert "run directory:" not in caplog.text  # refused before any work: its recipe.yaml still says 2 devices
    assert yaml.safe_load((tmp_path / "cut" / "recipe.yaml").read_text())["trainer"]["devices"] == 2
    resumed = ctr("train", "--resume", tmp_path / "run")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert again["test"] == whole["test"]


@pytest.mark.slow
def test_early_stopping_inside_an_epoch_logs_its_lrs_as_one_process_does(early_sgd):
    """Early stopping at the mid-epoch validation of step 8 (of 10 batches): the cut epoch's
    lr row is logged at its last step, as one process logs it (and counted in ``epochs``)."""
    ran, one, two = early_sgd
    logs = [ran / run / "logs" / "metrics.csv" for run in ("one", "two")]
    lrs = [rows_of(log, "lr/dense") for log in logs]
    assert [s for s, _ in lrs[0]] == [s for s, _ in lrs[1]] == [7]
    assert lrs[1][0][1] == pytest.approx(lrs[0][0][1])
    assert (two["steps"], two["epochs"]) == (one["steps"], one["epochs"]) == (8, 1)


SPARE_PARAMETER = '''
from dataclasses import dataclass

import torch
from torch import nn

from ctr.models.base import CTRModel
from ctr.recipe import ModelConfig
from ctr.registry import MODELS


@dataclass
class SpareConfig(ModelConfig):
    name: str = "with_spare"


@MODELS.register("with_spare", config=SpareConfig)
class WithSpare(CTRModel):
    def __init__(self, schema, layout, config):
        super().__init__(schema, layout, config)
        self.linear = nn.Linear(len(layout.pooled) * layout.dim, 1)
        self.spare = nn.Parameter(torch.zeros(3))  # never used by forward

    def forward(self, batch, embedded):
        return self.linear(embedded.pooled.flatten(1)).squeeze(-1)


@MODELS.register("detached", config=SpareConfig)
class Detached(WithSpare):
    def forward(self, batch, embedded):
        return super().forward(batch, embedded).detach()
'''


@pytest.mark.slow
@pytest.mark.parametrize("model, message", [
    ("with_spare", "trainer.devices: parameters model.spare got no gradient in this step"),
    ("detached", "model.name: Detached returned logits that no trainable parameter shapes"),
])
def test_a_plugin_model_two_processes_cannot_train_is_one_line_naming_why(tmp_path, cache, model, message):
    """with_spare: DDP stopped the run at the second step ("Expected to have finished reduction
    ... parameter indices 2") with a traceback from every rank. detached: the one-process check
    ran in the Lightning step only, and each rank's backward was torch's "element 0 of tensors
    does not require grad" traceback."""
    (tmp_path / "spare_plugin.py").write_text(SPARE_PARAMETER)
    recipe = write(tmp_path, cache=cache, plugins=["spare_plugin"], embedding={"method": "hash", "dim": 8, "budget": 0.5},
                   train={"max_steps": 3}, trainer={"devices": 2, "progress_bar": False, "num_threads": 1})
    raw = yaml.safe_load(recipe.read_text())
    raw["model"] = {"name": model}
    recipe.write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "ctr", "train", str(recipe), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"ctr: error: {message}" in done.stderr
    assert "Traceback" not in done.stderr
