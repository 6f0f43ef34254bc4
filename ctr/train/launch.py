"""Starting a distributed run: ``ctr train`` checking the recipe and spawning its processes,
and each process joining the process group. Imports neither Lightning nor the training loop:
the launcher's imports delay every rank's start.

``ctr train`` with ``trainer.devices`` N > 1 starts N processes (``python -m ctr train ...``)
with the environment torchrun would give them (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``), so ``torchrun --nproc-per-node N -m ctr train RECIPE`` and
``ctr train`` run the same code. With ``trainer.num_nodes`` > 1, ``ctr train`` runs on every
machine with ``MASTER_ADDR``, ``MASTER_PORT`` and ``NODE_RANK`` set.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

from ctr.errors import RecipeError, Terminated, UserError, sigterm_raises
from ctr.host import launched, usable_cores
from ctr.recipe import Recipe
from ctr.registry import EMBEDDINGS
from ctr.train.checks import check_batch_split
from ctr.train.placement import Placement, placement
from ctr.train.rundir import RunDir
from ctr.train.sharded import check_request

LAUNCHER = "CTR_LAUNCHER_PID"  # set in the ranks ctr's launcher starts
STARTER = "CTR_STARTER_PID"  # set in the ``ctr train`` processes another ctr command (a benchmark) starts

log = logging.getLogger("ctr.train")


def require_one_process(recipe: Recipe) -> None:
    """Refuses a recipe of several processes (``trainer.devices`` × ``num_nodes`` > 1) outside a
    launched group, where the caller (``runner.train``, ``ctr tune``) would train it on this one
    process; ``ctr train`` starts the processes of a distributed run."""
    if recipe.trainer.world_size > 1 and not launched():
        raise RecipeError(f"trainer.devices: {recipe.trainer.devices} × num_nodes {recipe.trainer.num_nodes} processes, "
                          "but this command trains in its one process (ctr train starts a distributed run's); set both "
                          "to 1")


def check_distributed(recipe: Recipe) -> None:
    """Refuses, before any work, what a distributed run does not do (one line naming the key)."""
    train, trainer = recipe.train, recipe.trainer
    check_request(recipe)
    EMBEDDINGS.get(recipe.embedding.method, "embedding.method")
    refused = {"trainer.compile": trainer.compile, "data.on_device": recipe.data.on_device,
               "trainer.precision": trainer.precision != "32-true"}  # its loop computes in fp32
    for key, on in refused.items():
        if on:
            raise RecipeError(f"{key}: not available in a distributed run (trainer.devices × num_nodes > 1)")
    if train.early_stop and not train.early_stop.monitor.startswith("valid/"):
        raise RecipeError(f"train.early_stop.monitor: a distributed run monitors a validation metric, "
                          f"not {train.early_stop.monitor}")
    check_batch_split(recipe, trainer.world_size)
    gpus = _local_gpus(recipe)
    if gpus and trainer.devices > gpus:  # process LOCAL_RANK takes GPU LOCAL_RANK
        raise RecipeError(f"trainer.devices: {trainer.devices} processes on this machine, one GPU each, but it has "
                          f"{gpus} CUDA GPU{'s' if gpus != 1 else ''}; set trainer.devices to at most {gpus}"
                          + (", or trainer.accelerator: cpu" if trainer.accelerator == "auto" else ""))


def _local_gpus(recipe: Recipe) -> int:
    """The CUDA GPUs this machine gives a run of ``recipe`` (0 with ``trainer.accelerator:
    cpu``), counted through NVML: ``torch.cuda.is_available`` would start the CUDA driver in
    the launcher."""
    return torch.cuda.device_count() if recipe.trainer.accelerator in ("gpu", "cuda", "auto") else 0


def _warn_if_oversubscribed(recipe: Recipe) -> None:
    """Warns when the ranks ``spawn`` starts on CPUs outnumber the cores it may use: they
    then wait for each other's cores."""
    devices, cores = recipe.trainer.devices, usable_cores()
    if not _local_gpus(recipe) and devices > cores:
        log.warning("trainer.devices: %d processes on the %d CPU core%s this process may use: the ranks wait for each "
                    "other's cores (a distributed run on CPUs is fastest with at most one rank a core)",
                    devices, cores, "s" if cores != 1 else "")


def spawn(args: list[str], recipe: Recipe) -> int:
    """Runs ``ctr`` with ``args`` in ``trainer.devices`` processes of this machine (ranks
    ``NODE_RANK`` × devices + local rank) and waits for them; returns their exit code (the
    first failure's, after stopping the others). SIGTERM stops them and raises ``Terminated``."""
    devices, nodes = recipe.trainer.devices, recipe.trainer.num_nodes
    if nodes > 1 and not {"MASTER_ADDR", "MASTER_PORT", "NODE_RANK"} <= set(os.environ):
        raise UserError("trainer.num_nodes: set MASTER_ADDR, MASTER_PORT and NODE_RANK on every machine "
                        "(or launch with torchrun)")
    node = int(os.environ.get("NODE_RANK", 0))
    common = {"WORLD_SIZE": str(devices * nodes), "LOCAL_WORLD_SIZE": str(devices),
              "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
              "MASTER_PORT": os.environ.get("MASTER_PORT") or str(_free_port())}
    _warn_if_oversubscribed(recipe)
    processes = []
    for local in range(devices):
        env = {**os.environ, **common, "RANK": str(node * devices + local), "LOCAL_RANK": str(local),
               LAUNCHER: str(os.getpid())}
        processes.append(subprocess.Popen([sys.executable, "-m", "ctr", *args], env=env))
    try:
        with sigterm_raises():
            return wait_all(processes)  # stops the ranks on any way out
    except Terminated:  # the CLI ends with the line of a one-process run, naming --resume of the run
        log.error("the %d ranks were stopped", devices)
        raise


def die_with_starter() -> None:
    """Makes this process end (SIGTERM) when the ``ctr`` process that started it dies, even by
    SIGKILL, rather than train on unseen: a rank of ctr's launcher, or a benchmark's run. A
    daemon thread checks every second that the starter is still its parent (a rank of torchrun
    is left to torchrun; a ``ctr train`` started otherwise is its user's)."""
    starter = os.environ.get(LAUNCHER) or os.environ.get(STARTER)
    if starter is None:
        return

    def watch() -> None:
        while os.getppid() == int(starter):
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="ctr-starter-watch", daemon=True).start()


ERROR_GRACE_SECONDS = 10.0  # how long a rank's error leaves the others to end by themselves


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_all(processes: list[subprocess.Popen]) -> int:
    """Waits for every process; the first to fail stops the others. Returns 0, the failed
    process's exit code, or 128 + the signal that killed it (the shell's convention), which
    is logged with the process's rank. A rank that exits with an error leaves the others
    ``ERROR_GRACE_SECONDS`` to end on their own: they meet the same error, and rank 0 is
    the one that says it (stopped at once, its line was lost)."""
    try:
        while True:
            codes = [p.poll() for p in processes]
            failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
            if failed or all(code == 0 for code in codes):
                break
            time.sleep(0.2)
        if any(code > 0 for _, code in failed):
            _wait_until(processes, time.monotonic() + ERROR_GRACE_SECONDS)
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            process.wait()
    if not failed:
        return 0
    killed = [(rank, code) for rank, code in failed if code < 0]
    rank, code = (killed or failed)[0]  # a rank's death, not the others' reaction to it
    if code > 0:
        return code
    log.error("local rank %d of %d was killed by %s", rank, len(processes), _signal_name(-code))
    return 128 - code


def _wait_until(processes: list[subprocess.Popen], deadline: float) -> None:
    """Waits until every process has ended or ``deadline`` (``time.monotonic``) passes."""
    while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
        time.sleep(0.1)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal has no name
        return f"signal {number}"


_joined = False  # set once this process joins a process group


def joined_a_group() -> bool:
    """Whether this process joined a process group: its backend's threads (DDP and
    torch.distributed.checkpoint keep gloo's alive past ``destroy_process_group``) may still
    be running when ``main`` returns."""
    return _joined


@contextmanager
def process_group(recipe: Recipe) -> Iterator[Placement]:
    """This rank's placement inside the joined process group (gloo on CPU, nccl on CUDA)."""
    place = placement(recipe)
    wanted = recipe.trainer.world_size
    if wanted > 1 and wanted != place.world_size:
        raise RecipeError(f"trainer.devices: the recipe asks for {wanted} processes but {place.world_size} were "
                          "launched")
    if place.rank != 0:
        logging.getLogger("ctr").setLevel(logging.WARNING)
    if place.device.type == "cuda":
        torch.cuda.set_device(place.device)
    # a group of one process, started without a launcher: its address for the group's life only
    # (a launch this process starts later, or a test's, would hand its ranks the stale port)
    own = {key: value for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(_free_port())))
           if key not in os.environ}
    os.environ.update(own)
    global _joined
    try:
        dist.init_process_group("nccl" if place.device.type == "cuda" else "gloo", rank=place.rank,
                                world_size=place.world_size)
        _joined = True
        try:
            yield place
        finally:
            dist.destroy_process_group()
    finally:
        for key in own:
            os.environ.pop(key, None)


@contextmanager
def group_holds(run: RunDir) -> Iterator[None]:
    """Holds ``run`` while the group trains in it. ctr's launcher holds it for the ranks it
    started; otherwise (torchrun, or a distributed run resumed in one process) rank 0 takes
    the lock, and when another process holds it every rank raises the same refusal."""
    if os.environ.get(LAUNCHER):
        yield
        return
    with ExitStack() as held:
        refusal = [""]
        if dist.get_rank() == 0:
            try:
                held.enter_context(run.exclusive())
            except UserError as err:  # held elsewhere, or the lock cannot be made: every rank stops, none waits
                refusal = [str(err)]
        dist.broadcast_object_list(refusal, src=0)
        if refusal[0]:
            raise UserError(refusal[0])
        yield


def shared_path(path: Path) -> Path:
    """Rank 0's ``path`` on every rank (a default run name holds the time each rank started)."""
    box = [str(path)]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])
