"""Shared fixtures: a tiny synthetic dataset prepared once per session; ``run_ctr``, a
command run in this process as a subprocess would run it."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from ctr.recipe import recipe_from_dict

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs one worker a core), each worker and the
    processes it starts keep to a core of their own: ``trainer.num_threads: auto`` then
    takes one thread, and two workers' threads never wait on each other's."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker is None or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= count:
        mine = cores[int(worker.removeprefix("gw")) :: count]
        os.sched_setaffinity(0, mine)
        os.environ["OMP_NUM_THREADS"] = str(len(mine))  # the processes tests start read it at torch's import
        torch.set_num_threads(len(mine))


@contextlib.contextmanager
def kept_process_settings():
    """Restores what a run in this process changes for good: torch's thread count (a recipe's
    ``trainer.num_threads``) and the seed variables Lightning's ``seed_everything`` exports.
    Every test runs in it; a fixture of a wider scope that trains in this process uses it too."""
    threads, seeds = torch.get_num_threads(), {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for key, value in seeds.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(autouse=True)
def _kept_process_settings():
    with kept_process_settings():
        yield


def run_ctr(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``ctr ARGS`` run by ``ctr.cli.main`` in this process from ``cwd``, as a subprocess would
    run it: its exit code, stdout and stderr (its log lines and warnings included: pytest's
    handlers on the root logger make ``ctr``'s ``logging.basicConfig`` a no-op here)."""
    from ctr.cli import main

    out, err, here, threads = io.StringIO(), io.StringIO(), os.getcwd(), torch.get_num_threads()
    handler, root = logging.StreamHandler(err), logging.getLogger()
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        os.chdir(cwd or here)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            with warnings.catch_warnings(record=True) as caught:
                code = main([str(arg) for arg in args])
        err.writelines(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught)
    finally:
        os.chdir(here)
        root.removeHandler(handler)
        root.setLevel(level)
        torch.set_num_threads(threads)  # a recipe's trainer.num_threads: 1 would stay for the tests after
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def begun_with(run: Path, raw: dict) -> None:
    """Rewrites ``run``'s recipe as if the run had begun with ``raw``: its recipe.yaml and the
    copy it keeps of the recipe it began with (a resume refuses a recipe.yaml edited since)."""
    for name in ("recipe.yaml", "schema/recipe.yaml"):
        (run / name).write_text(yaml.safe_dump(raw))


def tiny_recipe(tmp: Path, **sections) -> dict:
    """A raw recipe for a tiny synthetic run in ``tmp`` (sections override the defaults)."""
    raw = {
        "name": "tiny",
        "data": {"dataset": "synthetic", "rows": 6000, "vocab_scale": 0.002, "chunk_rows": 2000,
                 "cache_dir": str(tmp / "cache")},
        "model": {"name": "dlrm", "bottom_mlp": [16], "top_mlp": [16]},
        "embedding": {"method": "full", "dim": 8},
        "train": {"batch_size": 512, "eval_batch_size": 1024, "epochs": 1},
        "trainer": {"progress_bar": False},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory):
    """A prepared tiny synthetic dataset (shared by tests that only read it)."""
    from ctr.datasets import prepare

    tmp = tmp_path_factory.mktemp("tiny")
    recipe = recipe_from_dict(tiny_recipe(tmp))
    return prepare(recipe.data, progress=False)
