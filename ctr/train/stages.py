"""Multi-stage training: runs an embedding method's stages in order, saves what each stage
produced in the run directory, and resumes from the last finished stage.

Its files in the run directory are ``ctr.train.stage_files``'s (their layout is there).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ctr.batch import Batch
from ctr.embeddings.stages import Stage, StageContext
from ctr.errors import sigterm_raises
from ctr.metrics import auc
from ctr.train.loop import Fitted, Loader, Session, fit, load_checkpoint
from ctr.train.generators import restore_random, save_random
from ctr.train.rundir import RunDir
from ctr.train.stage_files import (StageFiles, continues_training, load_stage_state, load_torch, rewind, save_stage,
                                   save_torch)
from ctr.train.net import CTRNet, autocast
from ctr.train.task import CTRTask

log = logging.getLogger("ctr.train")


def restore_stages(net: CTRNet, run: RunDir) -> list[str]:
    """Replays the finished stages of ``run`` on a freshly built ``net``; returns their names.
    An unfinished last stage is begun too: the run's ``checkpoints/`` are its own (an
    unfinished run is evaluated from them as they stand)."""
    files, method = StageFiles(run), net.embedding
    finished, stages = files.read()["finished"], method.stages()
    for index, stage in enumerate(stages):
        if stage.name not in finished:
            if index == len(stages) - 1:
                method.begin_stage(stage)
            break
        method.begin_stage(stage)
        load_stage_state(net, files.folder(index, stage) / "state.pt")
    return finished


def train_stages(task: CTRTask, session: Session, resume: bool) -> Fitted:
    """Runs every stage of the task's embedding method; skips those a resumed run finished."""
    files, method = StageFiles(session.run), task.net.embedding
    record = files.read() if resume else {"finished": [], "seconds": {}}
    if not (resume and files.initial.exists()):
        save_torch(task.net.state_dict(), files.initial)
    stages, fitted = method.stages(), None
    for index, stage in enumerate(stages):
        folder = files.folder(index, stage)
        if stage.rewind:
            rewind(task.net, load_torch(files.initial))
        method.begin_stage(stage)
        if stage.name in record["finished"]:
            load_stage_state(task.net, folder / "state.pt")
            restore_random(folder, 0)
            log.info("stage %d/%d %s: finished earlier, restored", index + 1, len(stages), stage.name)
            continue
        log.info("stage %d/%d %s: started", index + 1, len(stages), stage.name)
        if stage.kind == "procedure":
            seconds = _run_procedure(task, session, stage)
        else:
            fitted = _fit_stage(task, session, stage, folder, index == len(stages) - 1, resume,
                                continues=continues_training(stages, index))
            task.load_state_dict(load_torch(fitted.best)["state_dict"])
            seconds = fitted.seconds
            record["fit"] = {"samples_per_s": fitted.samples_per_s, "epochs": fitted.epochs, "steps": fitted.steps}
        save_random(folder, 0)
        save_stage(task.net, stage, folder, seconds)
        files.finish(record, stage, seconds)
    if fitted is None:  # every stage finished before a resume: the figures of the last fit
        best = session.run.best if session.run.best.exists() else session.run.last
        last_fit = record.get("fit", {"samples_per_s": 0.0, "epochs": 0, "steps": 0})
        fitted = Fitted(best, 0.0, last_fit["samples_per_s"], last_fit["epochs"], last_fit["steps"])
    fitted.seconds = float(sum(record["seconds"].values()))
    fitted.stage_seconds = dict(record["seconds"])
    return fitted


def _fit_stage(task: CTRTask, session: Session, stage: Stage, folder: Path, last: bool, resume: bool,
               continues: bool) -> Fitted:
    """Trains one ``train`` stage; the last stage checkpoints where a single-stage run does.
    A bi-level stage's architecture steps read shuffled validation batches of the training
    batch size (this rank's share). A stage that ``continues`` training scores its start."""
    settings = task.net.embedding.stage_settings(stage.name)
    ckpt_dir = session.run.checkpoints if last else folder / "checkpoints"
    resume_from = ckpt_dir / "last.ckpt" if resume and (ckpt_dir / "last.ckpt").exists() else None
    taken = load_checkpoint(resume_from)["global_step"] if resume_from is not None else 0
    valid = _cycle(session.loader("valid", training=True, seed_offset=1), taken) if stage.bilevel else None
    with task.in_stage(stage, valid):
        return fit(
            task, session, ckpt_dir, epochs=settings.epochs, max_steps=settings.max_steps,
            resume_from=resume_from, log_root=None if last else folder, score_start=continues,
        )


def _run_procedure(task: CTRTask, session: Session, stage: Stage) -> float:
    start = time.perf_counter()
    context = StageContext(
        score=lambda: split_auc(task.net, session.loaders["valid"], session.recipe.trainer.precision),
        seed=session.recipe.seed,
        progress=session.progress,
    )
    with sigterm_raises():  # outside a fit, SIGTERM would end the process without a word
        task.net.embedding.run_procedure(stage, context)
    return time.perf_counter() - start


def _cycle(loader: Loader, taken: int = 0) -> Iterator[Batch]:
    """The loader's batches, epoch after epoch, after the first ``taken`` (the architecture
    steps a resumed stage took before its checkpoint: one per training step)."""
    epoch, batches = divmod(taken, len(loader))
    loader.load_state_dict({"epoch": epoch, "batches": batches})
    while True:
        yield from loader


@torch.no_grad()
def split_auc(net: CTRNet, loader: Iterable[Batch], precision: str) -> float:
    """AUC of ``net``'s logits (in eval mode) over every batch of ``loader``, computed under
    the autocast of a run of ``precision`` (as its validation is)."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    logits, labels = [], []
    for batch in loader:
        batch = batch.to(device)
        with autocast(precision, device):
            logits.append(net(batch)[0].double().cpu().numpy())
        labels.append(batch.labels.cpu().numpy())
    net.train(was_training)
    return auc(np.concatenate(labels), np.concatenate(logits))
