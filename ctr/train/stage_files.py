"""A multi-stage run's files in its run directory: their paths, the record of finished
stages, the torch files written whole (``save_torch``, ``load_torch``), and what a finished
stage saves and a resume restores (``save_stage``, ``load_stage_state``, ``rewind``).

Layout::

    stages/progress.json          finished stages, their seconds (one process: the last fit's figures too)
    stages/initial.pt             the net's state before the first stage (for rewinds)
    stages/<i>-<name>/state.pt    the whole net after stage i (what a resume restores)
    stages/<i>-<name>/output.pt   the stage's result: masks, dims, thresholds, selection weights
    stages/<i>-<name>/summary.json  the same, summarised for people
    stages/<i>-<name>/random-<r>.pt  rank r's random generators as the stage left them (restored on resume)
    stages/<i>-<name>/checkpoints/, logs/  checkpoints and log of a training stage (not the last)
    checkpoints/, logs/           the last stage's checkpoints and log, as a single-stage run

Imports neither Lightning nor the training loop: ``ctr train --resume``'s launcher reads which
stages' checkpoints a resume goes on with before it starts the ranks, and the distributed
loop's ranks run their stages without Lightning.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch

from ctr.atomic import atomic_path, atomic_write
from ctr.embeddings.stages import Stage, stages_finished
from ctr.errors import UserError, reason
from ctr.train.rundir import RunDir

if TYPE_CHECKING:
    from ctr.train.net import CTRNet

log = logging.getLogger("ctr.train")


class StageFiles:
    """Paths and the progress record of the stages of one run directory."""

    def __init__(self, run: RunDir):
        self.run = run
        self.root = run.stages
        self.progress = run.stage_progress
        self.initial = self.root / "initial.pt"

    def folder(self, index: int, stage: Stage) -> Path:
        return self.root / f"{index}-{stage.name}"

    def unfinished_checkpoints(self) -> list[Path]:
        """The ``checkpoints`` folders of the stage folders written (``folder``'s
        ``<index>-<name>``) whose stage the progress record does not call finished."""
        finished = self.read()["finished"]
        folders = self.root.glob("*-*/checkpoints")
        return [path for path in folders if path.parent.name.partition("-")[2] not in finished]

    def read(self) -> dict[str, Any]:
        if not self.progress.exists():
            return {"finished": [], "seconds": {}}
        try:
            record = json.loads(self.progress.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{self.progress}: not readable ({reason(err)})") from None
        if not (isinstance(record, dict) and isinstance(record.get("finished"), list)
                and isinstance(record.get("seconds"), dict)):
            raise UserError(f"{self.progress}: not a record of finished stages (no 'finished' list and 'seconds')")
        return record

    def finish(self, record: dict[str, Any], stage: Stage, seconds: float) -> None:
        record["finished"].append(stage.name)
        record["seconds"][stage.name] = seconds
        atomic_write(self.progress, json.dumps(record, indent=1) + "\n")


@contextmanager
def building_net(run: RunDir, resume: bool) -> Iterator[None]:
    """Inside, the net of ``run`` is built: on a resume, a RecipeError names its ``recipe.yaml``
    (``RunDir.resumed_recipe_named``), and a value only a stage it finished reads is taken as
    saved (``stages_finished``: a run begun before a limit on its search goes on past it)."""
    finished = StageFiles(run).read()["finished"] if resume else []
    with run.resumed_recipe_named(resume), stages_finished(finished):
        yield


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: Path) -> Any:
    """What ``save_torch`` wrote at ``path``; a UserError naming it when it is cut short or
    not a torch file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise UserError(f"{path}: missing (the stage's files are incomplete)") from None
    except Exception as err:  # torch.load raises whatever its unpickler meets in a broken file
        raise UserError(f"{path}: not a readable stage file ({reason(err, typed=True)})") from None


def load_stage_state(net: CTRNet, path: Path) -> None:
    """Loads the whole net a finished stage saved at ``path`` (``state.pt``) into ``net``."""
    try:
        net.load_state_dict(load_torch(path))
    except RuntimeError as err:
        raise UserError(f"{path}: does not fit this run's model ({reason(err)})") from None


def rewind(net: CTRNet, initial: dict[str, torch.Tensor]) -> None:
    """Restores every parameter of ``net`` to its value in ``initial`` (buffers are kept)."""
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name in initial and initial[name].shape == param.shape:
                param.copy_(initial[name])


def save_stage(net: CTRNet, stage: Stage, folder: Path, seconds: float) -> None:
    """Writes what stage ``stage`` produced: the whole net, the stage's output and summary."""
    method = net.embedding
    save_torch(net.state_dict(), folder / "state.pt")
    save_torch(method.stage_output(stage), folder / "output.pt")
    summary = {"stage": stage.name, "seconds": round(seconds, 3), **method.stage_summary(stage)}
    atomic_write(folder / "summary.json", json.dumps(summary, indent=1) + "\n")
    log.info("stage %s: done in %.1f s %s", stage.name, seconds, _short(summary))


def _short(summary: dict[str, Any]) -> str:
    """The summary's scalars, and totals of its per-table figures."""
    short = {}
    for key, value in summary.items():
        if isinstance(value, (int, float)) and key != "seconds":
            short[key] = value
        elif isinstance(value, dict) and key in ("kept_rows", "rows"):
            short[key] = sum(value.values())
    return json.dumps(short)


def continues_training(stages: list[Stage], index: int) -> bool:
    """Whether stage ``index`` goes on training the weights earlier stages left (a ``train``
    stage after the first that neither rewinds nor starts new tables). Such a stage counts
    its start as a candidate for its best weights: on one-epoch data a second pass over the
    same rows can overfit, and validation, not the schedule, decides which weights the
    stage keeps."""
    stage = stages[index]
    return index > 0 and stage.kind == "train" and not stage.rewind and not stage.fresh_tables
