"""A finished run as ``ctr eval``, ``ctr predict`` and ``ctr export`` read it: its best
checkpoint, the task rebuilt from its saved schema, and raw rows encoded with its saved
vocabularies (nothing is re-fitted; paths are relative to the run directory)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch

from ctr.atomic import check_writable, replaced_folder
from ctr.datasets.cache import generator_change, input_change, source_fingerprint
from ctr.datasets.preprocess import Encoded, encode_with_schema
from ctr.errors import UserError
from ctr.recipe import DataConfig, Recipe
from ctr.schema import Schema
from ctr.train.checkpoints import check_whole, read_state
from ctr.train.loop import load_checkpoint, load_weights, quiet_lightning
from ctr.train.rundir import RunDir, edit_between, saved_value, split_edit_between
from ctr.train.stages import restore_stages
from ctr.train.task import CTRTask

log = logging.getLogger("ctr.train")


def finished_run(run_root: Path, out: Path | None = None, split: str | None = None) -> tuple[RunDir, Recipe, Path]:
    """A finished run's directory, recipe and best checkpoint (checked readable first), with
    Lightning's notices quietened; a recipe whose net was edited since the run began is
    refused (``_refuse_net_edit``), as is, when the caller reads the recipe's ``split``, one
    whose split was (``_refuse_split_edit``); ``out``, a file the caller will write, is
    checked first (``_check_out``)."""
    quiet_lightning()
    run = RunDir(run_root)
    first, saved = run.first_recipe(), run.load_recipe()
    _refuse_net_edit(run, first, saved)
    if split is not None:
        _refuse_split_edit(run, split, first, saved)
    recipe = on_this_machine(saved, run)
    if out is not None:
        _check_out(out, run, recipe)
    best = best_checkpoint(run)
    if not run.metrics.exists():
        log.warning("%s: the run is not finished (no metrics.json); using %s as it stands "
                    "(`ctr train --resume` finishes it)", run.root, best.relative_to(run.root))
    return run, recipe, best


def _refuse_net_edit(run: RunDir, first: Recipe | None, saved: Recipe) -> None:
    """Refuses a run whose ``recipe.yaml`` (``saved``) was edited in its net's settings
    (``model``, ``embedding``; the kernel backend aside, which computes the same values) since
    the run began with ``first``: the checkpoint holds the weights of the net it began with,
    and an edit that keeps their shapes (an activation) would score another net."""
    edit = edit_between(first, saved, ignoring=("embedding.backend",), sections=("model", "embedding"))
    if edit:
        raise UserError(f"{run.recipe}: edited since the run began ({edit}); its checkpoint holds the weights of the "
                        "net the run began with: undo the edit")


def _refuse_split_edit(run: RunDir, split: str, first: Recipe | None, saved: Recipe) -> None:
    """Refuses a run whose ``recipe.yaml`` (``saved``) was edited since the run began with
    ``first`` in the ``data.split`` keys that draw which rows ``split`` holds
    (``split_edit_between``): it would hold other rows than the run's (rows of the other
    splits among them)."""
    edit = split_edit_between(first, saved, split)
    if edit:
        raise UserError(f"{run.recipe}: edited since the run began ({edit}); the {split} split would hold other rows "
                        "than the run's: undo the edit")


def on_this_machine(recipe: Recipe, run: RunDir) -> Recipe:
    """``recipe`` as this machine scores it: a run trained on a GPU is scored on the CPU of a
    machine without one, with the CPU's kernels (the same weights and values; float sums in
    another order), and a warning says so."""
    if recipe.trainer.accelerator not in ("gpu", "cuda") or torch.cuda.is_available():
        return recipe
    log.warning("%s: trained on a GPU (trainer.accelerator: %s); this machine has none: scoring on the CPU",
                run.root, recipe.trainer.accelerator)
    return replace(recipe, trainer=replace(recipe.trainer, accelerator="cpu"),
                   embedding=replace(recipe.embedding, backend=None))


def _check_out(out: Path, run: RunDir, recipe: Recipe) -> None:
    """Refuses an ``out`` (the file ``--out`` names) that is a folder, lies inside the run (it
    would replace the run's own files), is one of the recipe's input files (it would replace
    the rows) or lies inside an input folder (later reads of that folder would take it for
    rows) or where no file can be created (checked before the work that writes it)."""
    if out.is_dir():
        raise UserError(f"{out}: is a folder; name the file to write")
    written = out.resolve()
    if written.is_relative_to(run.root.resolve()):
        raise UserError(f"{out}: inside the run directory {run.root}; write it elsewhere")
    for key, given in recipe.data.input_paths().items():
        if written == given.resolve():
            raise UserError(f"{out}: is the run's input ({key}); choose another --out")
        if not given.is_file() and written.is_relative_to(given.resolve()):  # no folder is under a file
            raise UserError(f"{out}: inside the run's input folder {given} ({key}); choose another --out")
    check_writable(out)


def best_checkpoint(run: RunDir) -> Path:
    """The checkpoint metrics.json names (relative to the run), else ``checkpoints/best.ckpt``
    (a distributed run's ``checkpoints/best`` folder); checked readable before any data is read."""
    metrics = run.read_metrics() if run.metrics.exists() else {}
    unfinished = run.checkpoints / "best" if replaced_folder(run.checkpoints / "best").is_dir() else run.best
    ckpt = run.root / metrics["best_checkpoint"] if "best_checkpoint" in metrics else unfinished
    ckpt = replaced_folder(ckpt)  # a swap of the best folder stopped between its renames: the whole copy
    if not ckpt.exists():
        raise UserError(f"{run.root}: no checkpoint at {ckpt}")
    if ckpt.is_dir():
        read_state(ckpt)  # a distributed run's DCP folder
        check_whole(ckpt, optimizers=False)
    else:
        load_checkpoint(ckpt)
    return ckpt


def restored_task(run: RunDir, recipe: Recipe, schema: Schema, ckpt: Path) -> CTRTask:
    """The run's task with the weights of ``ckpt`` (the stages of a multi-stage method replayed first)."""
    task = CTRTask(recipe, schema)
    if task.net.embedding.stages():
        restore_stages(task.net, run)
    load_weights(task, ckpt)
    return task


def encode_rows(run: RunDir, recipe: Recipe, out: Path, data: Path | None = None, split: str = "test",
                progress: bool | None = None) -> Encoded:
    """Rows encoded with the run's saved schema and vocabularies into ``out/<split>``: the
    recipe's ``split`` (assigned as in training), or every row of ``data`` (a file or folder
    in the recipe's format; then in ``out/test``, label and group optional)."""
    config = recipe.data
    if data is not None and not data.exists():
        raise UserError(f"{data}: no such file or folder")
    try:
        if data is not None:
            config = config.reading(data)  # a dataset may look for its files here (movielens, amazon)
        encoded = encode_with_schema(config, run.schema, out, None if data is not None else split, progress)
    except UserError as err:
        if data is None or not str(err).startswith("data.path: "):
            raise
        raise UserError(str(err).removeprefix("data.path: ")) from None  # the command line named it, not data.path
    if data is None:
        _warn_if_changed(run, config, split, encoded.tally.rows)
    return encoded


def _warn_if_changed(run: RunDir, config: DataConfig, split: str, rows: int) -> None:
    """Warns when ``split`` no longer has the rows it had in training, or else when a generated
    dataset's generator now draws other rows, or an input file changed since (the run's saved
    key): its metrics are not, or may not be, the run's."""
    report = run.schema / "report.json"
    trained = saved_value(report, "splits", split, "rows") if report.exists() else rows
    if trained != rows:
        log.warning("%s: the %s split now has %d rows, %d in training: its data changed since the run, so these "
                    "metrics are not the run's", run.root, split, rows, trained)
        return
    source = run.saved_source()
    if source is None:
        return
    drawn = generator_change(source, config)
    if drawn:
        log.warning("%s: %s: these metrics are not the run's", run.root, drawn)
        return
    change = input_change(source, source_fingerprint(config))
    if change:
        log.warning("%s: %s after the run trained; the %s split has as many rows, but these metrics may not be the "
                    "run's", run.root, change, split)


def oov_counts(encoded: Encoded) -> dict[str, dict[str, int]]:
    """Per sparse feature: ids looked up and how many were out of vocabulary."""
    tally = encoded.tally
    return {
        info.spec.name: {"ids": int(tally.values[info.spec.name]), "oov": int(tally.oov[info.spec.name])}
        for info in encoded.prepared.schema.sparse_features
    }
