"""Checkpoints of a distributed run: torch.distributed.checkpoint (DCP) folders.

A checkpoint folder (``checkpoints/last``, ``checkpoints/best``) holds DCP's files of the
network's weights (a sharded table as its shards, written by the ranks that hold them; a
replicated tensor once) and of the sharded tables' fused optimizer state, plus, beside
them, ``ctr.json`` (the training position, early stopping, how the network was placed),
``optimizers.pt`` (the dense and replicated tables' optimizers: written by rank 0) and ``random-<rank>.pt``
(each rank's python, numpy, torch and CUDA generators). DCP reshards on load, so a checkpoint loads into another world size, or into
one process without a process group (``ctr eval``, ``predict``, ``export``). A save writes
``.<name>.tmp`` and then swaps it in (``replace_folder``); one that a kill stopped between
the swap's renames is finished when the run's checkpointer is next made (``--resume``).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch import nn

from ctr.atomic import atomic_write, finish_replace, replace_folder, replaced_folder, staging_folder
from ctr.errors import UserError, raise_wrapped_signal, reason
from ctr.recipe import EarlyStopConfig
from ctr.train.placement import Placement
from ctr.train.generators import restore_random, save_random
from ctr.train.rundir import RunDir
from ctr.train.stage_files import StageFiles

STATE_FILE = "ctr.json"
OPTIMIZERS_FILE = "optimizers.pt"


def restore_checkpoint_random(path: Path, place: Placement, saved_world_size: int) -> None:
    """Puts this rank's generators where the checkpoint at ``path`` saved them, when it was
    saved on this world size (``restore_random``). A checkpoint of an earlier ctr kept only
    torch's CPU generator (``rng-<rank>.pt``)."""
    cpu_only = path / f"rng-{place.rank}.pt"
    if not cpu_only.is_file():
        restore_random(path, place.rank, place.world_size)
    elif saved_world_size == place.world_size:
        torch.set_rng_state(torch.load(cpu_only))


def holds_distributed_checkpoints(run_root: Path) -> bool:
    """Whether the run at ``run_root`` wrote distributed checkpoint folders (whole or not):
    its ``checkpoints/last`` or a stage's. Such a run resumes in the distributed loop, on any
    number of processes, which reads them or says what they lack."""
    lasts = [run_root / "checkpoints" / "last", *(run_root / "stages").glob("*/checkpoints/last")]
    lasts += [path.parent / "last" for path in (run_root / "stages").glob("*/checkpoints/.last.old")]
    return any(replaced_folder(path).is_dir() for path in lasts)


INCOMPLETE = ("; ctr writes a checkpoint folder whole: restore its missing files (on several machines, --out must be "
              "on a file system every machine sees), or train a new run")


def check_resumable(run_root: Path) -> None:
    """Refuses, before any work, to resume the run at ``run_root`` when a checkpoint folder the
    resume reads lacks a file (``read_state``, ``check_whole``): the ``last`` of each training
    it goes on with (the run's, an unfinished stage's) and the ``best`` beside it, which that
    training loads at its end. A multi-stage run may have none yet."""
    for folder in resumed_trainings(run_root):
        if replaced_folder(folder / "last").is_dir():
            for name in ("last", "best"):
                read_resumable(replaced_folder(folder / name))


def resumed_trainings(run_root: Path) -> list[Path]:
    """The ``checkpoints`` folders of the trainings a resume of ``run_root`` goes on with: the
    run's (its last stage's) and those of the stages (``stages/<i>-<name>``) not finished."""
    return [run_root / "checkpoints", *StageFiles(RunDir(run_root)).unfinished_checkpoints()]


def read_state(path: Path) -> dict[str, Any]:
    """``ctr.json`` of a distributed checkpoint (a UserError naming a folder that is not
    one, the file it lacks, or a ctr.json cut short or without its placement)."""
    folder = replaced_folder(path)
    if not folder.is_dir():
        raise UserError(f"{path}: no such checkpoint folder")
    missing = [name for name in (STATE_FILE, ".metadata") if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{path}: not a whole distributed checkpoint (no {', '.join(missing)}){INCOMPLETE}")
    try:
        info = json.loads((folder / STATE_FILE).read_text())
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
        _check_placement(info)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, a list, a placement missing
        raise UserError(unreadable(folder / STATE_FILE, err)) from None
    return info


SAVED_PLACEMENT = {"world_size": int, "sharded": bool}  # the keys of ctr.json that every reader of it takes


def _check_placement(info: dict[str, Any]) -> None:
    """A ValueError where ``info`` (a ctr.json) lacks a key of ``SAVED_PLACEMENT``, holds
    another type there (a KeyError traceback of ``ctr eval``, ``predict``, ``export``) or a
    ``world_size`` below 1 (a resume looked for no rank's generators)."""
    for key, kind in SAVED_PLACEMENT.items():
        if key not in info:
            raise ValueError(f"no {key!r}")
        if type(info[key]) is not kind:  # not isinstance: a bool is an int
            raise ValueError(f"{key!r} is {info[key]!r}, not {kind.__name__}")
    if info["world_size"] < 1:
        raise ValueError(f"'world_size' is {info['world_size']}, not a count of processes (>= 1)")


def unreadable(path: Path, err: Exception) -> str:
    """The error of a checkpoint file at ``path`` that ``err`` stopped from loading."""
    return f"{path}: cut short or not ctr's ({reason(err, typed=True)}); restore it, or train a new run"


ZIP_MAGIC = b"PK\x03\x04"  # the first bytes of a file torch.save writes (a zip archive)


def load_mapped(path: Path) -> Any:
    """``torch.load`` of ``path`` on the CPU, its tensors mapped from the file rather than read
    where it is a zip archive as torch.save writes; another file (empty, cut short in its first
    bytes, the legacy format) is read, so that its error says what is wrong with it."""
    with open(path, "rb") as file:
        mappable = file.read(len(ZIP_MAGIC)) == ZIP_MAGIC
    return torch.load(path, map_location="cpu", weights_only=False, mmap=mappable)


def check_loads(path: Path) -> None:
    """Refuses a torch file of a checkpoint that does not load (cut short, not torch's),
    mapping its tensors rather than reading them (``load_mapped``)."""
    try:
        load_mapped(path)
    except Exception as err:  # torch.load raises whatever its unpickler meets in a broken file
        raise UserError(unreadable(path, err)) from None


def read_resumable(path: Path) -> dict[str, Any]:
    """``ctr.json`` of the checkpoint at ``path`` once it holds every file a resume reads:
    those of ``check_whole`` with ``optimizers.pt``, and each rank's generators
    (``random-<rank>.pt``; an earlier ctr's ``rng-<rank>.pt``), each of these torch files
    loading (``check_loads``), else a UserError naming them."""
    info = read_state(path)
    check_whole(path, optimizers=True)
    ranks = range(info["world_size"])
    generators = [next((f for k in ("rng", "random") if (f := path / f"{k}-{r}.pt").is_file()), None) for r in ranks]
    missing = [f"random-{r}.pt" for r, found in zip(ranks, generators) if found is None]
    if missing:
        raise UserError(f"{path}: not a whole distributed checkpoint (no {', '.join(missing)}){INCOMPLETE}")
    for file in (path / OPTIMIZERS_FILE, *generators):
        check_loads(file)
    return info


def check_whole(path: Path, optimizers: bool) -> None:
    """Raises a UserError naming the files that checkpoint folder ``path`` lacks: the data
    files DCP's ``.metadata`` lists (the shards one rank wrote), and ``optimizers.pt`` where
    ``optimizers`` (a resume needs it, an evaluation does not); or a data file shorter than
    the bytes ``.metadata`` places in it (cut short)."""
    try:
        stored = dcp.FileSystemReader(str(path)).read_metadata().storage_data.values()
    except Exception as err:  # DCP unpickles .metadata: whatever a broken file raises
        raise UserError(f"{path}/.metadata: not a readable DCP checkpoint index ({reason(err, typed=True)})") from None
    ends: dict[str, int] = {}
    for info in stored:
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    wanted = set(ends) | ({OPTIMIZERS_FILE} if optimizers else set())
    missing = sorted(name for name in wanted if not (path / name).is_file())
    if missing:
        raise UserError(f"{path}: not a whole distributed checkpoint (no {', '.join(missing)}){INCOMPLETE}")
    short = [f"{name} is cut short: {size} of {end} bytes" for name, end in sorted(ends.items())
             if (size := (path / name).stat().st_size) < end]
    if short:
        raise UserError(f"{path}: not a whole distributed checkpoint ({', '.join(short)}){INCOMPLETE}")


@dataclass
class TrainState:
    """Where training stands: the epoch (its first ``batches`` trained), optimizer steps, the
    best monitored value, early stopping (its own best and the validations without a gain),
    training rows and seconds, the lrs at the epoch's start (logged at its end)."""

    epoch: int = 0
    batches: int = 0
    step: int = 0
    best: float | None = None
    stop_best: float | None = None
    wait: int = 0
    stopped: bool = False
    samples: int = 0
    seconds: float = 0.0
    epoch_lrs: dict[str, float] = field(default_factory=dict)

    @property
    def epochs_begun(self) -> int:
        """Epochs trained, whole or in part (Lightning's ``current_epoch`` after a fit: an
        epoch max_steps cut counts)."""
        return self.epoch + (1 if self.batches else 0)

    @classmethod
    def from_saved(cls, info: dict[str, Any]) -> TrainState:
        """The state a checkpoint's ``ctr.json`` holds (a key that is no field, an older ctr's
        ``validations``, is ignored)."""
        return cls(**{key: info[key] for key in cls.__dataclass_fields__ if key in info})

    def update_patience(self, value: float, mode: str, stop: EarlyStopConfig | None) -> None:
        """Lightning's EarlyStopping rule: a gain is more than ``min_delta`` past its best;
        ``patience`` validations without one stop the run, and so does a value that is not finite.
        Compared in float32, as Lightning compares the logged metric."""
        if stop is None:
            return
        if not math.isfinite(value):
            self.stopped = True
            return
        current = torch.tensor(value, dtype=torch.float32)
        better, shift = (torch.gt, stop.min_delta) if mode == "max" else (torch.lt, -stop.min_delta)
        if self.stop_best is None or better(current - shift, torch.tensor(self.stop_best, dtype=torch.float32)):
            self.stop_best, self.wait = current.item(), 0
        else:
            self.wait += 1
            self.stopped = self.wait >= stop.patience


def _holds_values(state: Any) -> bool:  # noqa: ANN401 (a nested state dict)
    """Whether nested dicts and lists ``state`` hold any value (DCP saves only those)."""
    if isinstance(state, dict):
        return any(_holds_values(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return any(_holds_values(v) for v in state)
    return True


def optimizers_misfit(path: Path, saved_world_size: int, world_size: int) -> str:
    """The error of a checkpoint whose ``optimizers.pt`` does not fit this run's optimizers
    (a table's sharding family changed): how to resume it."""
    where = (f"the checkpoint was written on {saved_world_size} processes, this run has {world_size}: resume it on "
             f"{saved_world_size} (trainer.devices × trainer.num_nodes), where it was planned so; "
             if saved_world_size != world_size else "")
    return (f"{path}: its optimizers do not fit this run's: a table is data-parallel here and sharded there, or the "
            f"reverse ({where}a recipe that fixes each table's type in distributed.sharding / distributed.tables keeps "
            "it on any number of processes: docs/distributed.md)")


class Checkpointer:
    """Saves and loads one rank's part of the run's checkpoints (collective calls: every rank
    calls them together).

    Args:
        folder: the run's ``checkpoints`` folder; module: the DMP or DDP network;
        optimizer: its optimizers outside the backward (replicated state, ``optimizers.pt``); sharded: DMP (else DDP); place: this rank.
    """

    def __init__(self, folder: Path, module: nn.Module, optimizer: Any, sharded: bool,
                 place: Placement):
        self.folder, self.module, self.optimizer = folder, module, optimizer
        self.sharded, self.place = sharded, place
        if place.rank == 0:  # a save a kill stopped between its renames: finished before any load or save
            for path in (self.best, self.last):
                finish_replace(path)
        dist.barrier()

    best = property(lambda self: self.folder / "best")
    last = property(lambda self: self.folder / "last")

    def _state(self) -> dict[str, Any]:
        if not self.sharded:
            return {"model": self.module.module.state_dict()}
        state = {"model": self.module.state_dict()}
        fused = self.module.fused_optimizer.state_dict()
        if _holds_values(fused):  # SGD's is empty dicts: DCP would save no key, and its load would miss it
            state["embedding_optimizer"] = fused
        return state

    def save(self, path: Path, state: TrainState) -> None:
        """Writes the checkpoint at ``path`` (beside it first; it replaces ``path`` when whole)."""
        tmp, rank = staging_folder(path), self.place.rank
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        dist.barrier()
        try:
            dcp.save(self._state(), checkpoint_id=str(tmp))
        except CheckpointException as err:
            raise_wrapped_signal(err)
            raise
        save_random(tmp, rank, self.place.world_size)
        fused_lr = self._fused_lr()
        if rank == 0:
            torch.save(self.optimizer.state_dict(fused_lr), tmp / OPTIMIZERS_FILE)
            info = {**asdict(state), "world_size": self.place.world_size, "sharded": self.sharded}
            atomic_write(tmp / STATE_FILE, json.dumps(info, indent=2) + "\n")
        dist.barrier()
        if rank == 0:
            replace_folder(path)
        dist.barrier()

    def _fused_lr(self) -> float | None:
        """The sharded tables' lr, from whichever ranks hold one (every rank calls this)."""
        if not self.sharded:
            return None
        mine = self.optimizer.fused_lr()
        held = torch.tensor([-1.0 if mine is None else mine], dtype=torch.float64, device=self.place.device)
        dist.all_reduce(held, op=dist.ReduceOp.MAX)
        return None if held.item() < 0 else held.item()

    def load(self, path: Path) -> dict[str, Any]:
        """Loads the weights and optimizer states at ``path`` (resharded to this run's plan);
        returns its ``ctr.json``."""
        info = read_resumable(path)
        if info["sharded"] != self.sharded:
            raise UserError(f"{path}: a {'sharded' if info['sharded'] else 'data-parallel'} run's checkpoint; "
                            "this run places its tables otherwise")
        state = self._state()
        try:
            dcp.load(state, checkpoint_id=str(path))
        except CheckpointException as err:  # a BaseException: each rank's failure, wrapped
            raise_wrapped_signal(err)
            raise UserError(f"{path}: does not fit this run's model ({reason(err)})") from None
        if self.sharded:
            self.module.load_state_dict(state["model"])
            if "embedding_optimizer" in state:
                self.module.fused_optimizer.load_state_dict(state["embedding_optimizer"])
        else:
            self.module.module.load_state_dict(state["model"])
        self._load_optimizers(path, info["world_size"])
        restore_checkpoint_random(path, self.place, info["world_size"])
        return info

    def _load_optimizers(self, path: Path, saved_world_size: int) -> None:
        """Loads ``optimizers.pt``: it holds the data-parallel tables' optimizer, which fits
        only the tables that were data-parallel when it was written (on ``saved_world_size``
        processes: ``auto`` may plan otherwise on another number)."""
        try:
            self.optimizer.load_state_dict(torch.load(path / OPTIMIZERS_FILE, weights_only=False))
        except (ValueError, KeyError):
            raise UserError(optimizers_misfit(path, saved_world_size, self.place.world_size)) from None

    def restore(self) -> TrainState:
        """The training state of ``last`` after loading it (``ctr train --resume``)."""
        return TrainState.from_saved(self.load(self.last))
