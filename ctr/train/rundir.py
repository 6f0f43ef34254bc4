"""The run directory: recipe snapshot, schema, checkpoints, logs, metrics, plots."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import IO, Any, Iterator

import yaml

from ctr.atomic import atomic_path, atomic_write, removes_made_folders, replaced_folder
from ctr.datasets.cache import KEY_FILE, PIPELINE_VERSION, generator_change, input_change, source_fingerprint
from ctr.datasets.source import keyed_split, resolve_features
from ctr.errors import RecipeError, TrainingDiverged, UserError, reason
from ctr.metrics import metrics_from_json, metrics_json
from ctr.recipe import DataConfig, Recipe, recipe_from_dict
from ctr.recipe.files import first_difference, read_yaml
from ctr.registry import DATASETS
from ctr.train.old_recipes import upgraded

log = logging.getLogger("ctr.train")


RUN_ENTRIES = frozenset({"recipe.yaml", "schema", "checkpoints", "logs", "stages", "metrics.json", "curves.png"})


RESUME_OVERRIDES = ("trainer.devices", "trainer.num_nodes")  # what a resume may change: the world size


def default_run_dir(recipe: Recipe) -> Path:
    """``output.dir`` (``~`` expanded, as in data paths), else ``runs/<name>-<time>``."""
    return Path(recipe.output.dir or f"runs/{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}").expanduser()


def _as_kept(recipe: Recipe) -> dict[str, Any]:
    """``recipe`` as a run keeps it: its data paths absolute."""
    raw = recipe.to_dict()
    for key in recipe.data.path_keys:
        value = raw["data"].get(key)
        if isinstance(value, str) and value:
            raw["data"][key] = str(Path(value).expanduser().resolve())
    return raw


def _difference(before: Recipe, now: Recipe, ignoring: tuple[str, ...], sections: tuple[str, ...] = ()) -> str | None:
    """``first_difference`` of two recipes as runs keep them, where their output goes and the
    dotted keys ``ignoring`` aside; of their top-level ``sections`` alone when given."""
    raws = (_as_kept(before), _as_kept(now))
    for raw in raws:
        del raw["output"]
        for key in ignoring:
            section, _, name = key.partition(".")
            raw.get(section, {}).pop(name, None)
    if sections:
        raws = tuple({key: raw.get(key) for key in sections} for raw in raws)
    return first_difference(*raws)


def edit_between(first: Recipe | None, now: Recipe, ignoring: tuple[str, ...] = RESUME_OVERRIDES,
                 sections: tuple[str, ...] = ()) -> str | None:
    """How ``now``, a run's ``recipe.yaml``, differs from ``first``, the recipe the run began
    with (``RunDir.first_recipe``; the dotted keys ``ignoring`` aside, by default the world
    size; only their top-level ``sections`` when given): None when the same, or when
    ``first`` is None (a run of an earlier ctr, which kept no copy)."""
    return None if first is None else _difference(first, now, ignoring, sections)


def split_edit_between(first: Recipe | None, now: Recipe, split: str) -> str | None:
    """How ``now``'s ``data.split`` differs from ``first``'s (as ``edit_between``) in the keys
    that decide which rows ``split`` holds (its dataset's ``split_keys_of``)."""
    if first is None or first.data.split == now.data.split:
        return None
    read = DATASETS.get(now.data.dataset, "data.dataset").target(now.data).split_keys_of(split)
    return first_difference(keyed_split(first.data.split, read), keyed_split(now.data.split, read), "data.split.")


def _saved_recipe(path: Path) -> Recipe:
    """The recipe a run saved at ``path``, its keys brought up (a run of an earlier ctr); its
    refusal names the file (a value an earlier ctr took, which this one refuses, say)."""
    raw = upgraded(read_yaml(path))
    try:
        return recipe_from_dict(raw)
    except RecipeError as err:
        raise RecipeError(f"{path}: {err}") from None


def _left_by_a_write(name: str) -> bool:
    """Whether ``name`` is what an interrupted ``atomic_path`` leaves in a run folder."""
    return name.startswith(".") and (".tmp-" in name or name.endswith(".old") and name[1:-4] in RUN_ENTRIES)


def refuse_writing_over_recipe(recipe: Path, out: Path, written: list[Path], writer: str) -> None:
    """Refuses an ``out`` where a file that ``writer`` (a command's name, for the message)
    writes, one of ``written`` (paths under ``out``), is its recipe file ``recipe``: ``--out .``
    beside the recipe wrote over it."""
    if any(path.resolve() == recipe.resolve() for path in written):
        raise UserError(f"--out {out}: {writer} would write over its recipe {recipe}; choose another --out")


@contextmanager
def held(folder: Path, doing: str) -> Iterator[None]:
    """Holds ``folder`` for this process: another ``ctr`` process asking for it meanwhile is
    refused with "another ctr process <doing>". The lock is ``.<name>.lock`` beside the
    folder (of its absolute path: ``.`` and another name of the folder share it), removed after,
    with the folders made for it that are left empty (a run refused before it wrote anything)."""
    place = folder.resolve()
    lock = place.parent / f".{place.name}.lock"
    with removes_made_folders(lock.parent), _locked(lock, folder, doing):
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)  # while still locked: a process that opened it meanwhile retries


def _locked(lock: Path, folder: Path, doing: str) -> IO[str]:
    """``lock`` opened and locked by this process; retried when the file locked is no longer
    the one at ``lock`` (its holder removed it between this open and this lock)."""
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            handle = lock.open("w")
        except OSError as err:  # the lock is ctr's own file: the folder asked for is what cannot be written
            if isinstance(err, FileNotFoundError) and not lock.parent.exists():
                continue  # its folder, made by another holder, removed by it meanwhile (held): made again
            raise UserError(f"{folder}: cannot be written ({(err.strerror or str(err)).lower()})") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise UserError(f"{folder}: another ctr process {doing}") from None
        except OSError as err:  # a file system without locks
            handle.close()
            raise UserError(f"{folder}: cannot be locked ({(err.strerror or str(err)).lower()})") from None
        if lock.exists() and os.fstat(handle.fileno()).st_ino == lock.stat().st_ino:
            return handle
        handle.close()


def _holds_last(checkpoints: Path) -> bool:
    """Whether the ``checkpoints`` folder of a training holds its last checkpoint: Lightning's
    ``last.ckpt`` or a distributed ``last`` folder (``replaced_folder``: also beside its place)."""
    return (checkpoints / "last.ckpt").exists() or replaced_folder(checkpoints / "last").exists()


def saved_value(path: Path, *keys: str) -> Any:
    """The value at ``keys`` of a JSON file a run saved (``schema/key.json``,
    ``schema/report.json``); a UserError naming the file when it is not whole (cut short, not
    JSON, a key missing)."""
    try:
        value = json.loads(path.read_text())
        for key in keys:
            value = value[key]
    except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError, UnicodeDecodeError, not a mapping
        raise UserError(f"{path}: not a readable saved {path.name} ({reason(err, typed=True)})") from None
    return value


class RunDir:
    """Paths inside one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    recipe = property(lambda self: self.root / "recipe.yaml")
    schema = property(lambda self: self.root / "schema")
    checkpoints = property(lambda self: self.root / "checkpoints")
    best = property(lambda self: self.root / "checkpoints" / "best.ckpt")
    last = property(lambda self: self.root / "checkpoints" / "last.ckpt")
    metrics = property(lambda self: self.root / "metrics.json")
    stages = property(lambda self: self.root / "stages")
    stage_progress = property(lambda self: self.root / "stages" / "progress.json")
    curves = property(lambda self: self.root / "curves.png")
    log_csv = property(lambda self: self.root / "logs" / "metrics.csv")

    @property
    def started(self) -> bool:
        """Whether training has left something to resume: a last checkpoint (a one-process
        run's, a distributed run's folder, also while a save that a kill stopped between its
        renames left it beside its place), a stage's, or a multi-stage run's finished stage
        (``stages/progress.json``). A stages/ holding only what a stage writes before either
        (the net before the first stage) is not: a run refused at its first batch has it."""
        folders = [self.checkpoints, *self.stages.glob("*/checkpoints")]
        return self.stage_progress.exists() or any(_holds_last(folder) for folder in folders)

    @property
    def holds_run(self) -> bool:
        """Whether the folder holds a run to resume or read: started or finished (not the
        recipe and schema that a run an earlier ctr refused before training left, nor nothing)."""
        return self.started or self.metrics.exists()

    def lightning_checkpoints(self) -> list[Path]:
        """The checkpoints a one-process run writes (Lightning's ``*.ckpt``), its stages' too."""
        return sorted([*self.checkpoints.glob("*.ckpt"), *self.root.glob("stages/*/checkpoints/*.ckpt")])

    def check_usable(self) -> None:
        """Raises a UserError when the run directory's path names something other than a
        folder (a regular file, say), before anything is written."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"{self.root}: exists and is not a folder; choose another --out")
        for parent in self.root.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise UserError(f"{self.root}: {parent} is not a folder; choose another --out")
                break

    def foreign_entries(self) -> list[str]:
        """What the folder holds that no run writes (sorted), leaving out the names an
        interrupted atomic write can leave (``.<name>.tmp-<pid>``, a run folder's ``.<name>.old``)."""
        if not self.root.is_dir():
            return []
        names = (entry.name for entry in self.root.iterdir())
        return sorted(n for n in names if n not in RUN_ENTRIES and not _left_by_a_write(n))

    def write_recipe(self, recipe: Recipe) -> None:
        """The recipe snapshot, its data paths made absolute (the run is then read from any folder)."""
        atomic_write(self.recipe, yaml.safe_dump(_as_kept(recipe), sort_keys=False))

    def settings_change(self, recipe: Recipe, ignoring: tuple[str, ...] = ()) -> str | None:
        """How ``recipe`` differs from the one this run was begun with (``first_difference``;
        where its output goes aside, and the dotted keys ``ignoring``): None when it is the same
        or the run has none yet. A resume, and a run driver that trains many runs (tune, bench),
        goes on with a run only when it is None."""
        if not self.recipe.exists():
            return None
        resolved = replace(recipe, data=resolve_features(recipe.data))  # as training keeps it
        return _difference(self.load_recipe(), resolved, ignoring)

    def edit_since_start(self) -> str | None:
        """How ``recipe.yaml`` differs from the recipe the run began with (``edit_between``,
        the world size aside)."""
        return edit_between(self.first_recipe(), self.load_recipe())

    def first_recipe(self) -> Recipe | None:
        """The recipe the run began with (its copy in ``schema/``, written once at the start);
        None for a run of an earlier ctr, which kept no copy."""
        first = self.schema / "recipe.yaml"
        return _saved_recipe(first) if first.exists() else None

    @contextmanager
    def resumed_recipe_named(self, resume: bool) -> Iterator[None]:
        """Inside, on a resume, a RecipeError names the run's ``recipe.yaml``, which the recipe
        was read from (a value it saved that is refused once the net is built on the data,
        as ``embedding.blocks`` above the ids)."""
        try:
            yield
        except RecipeError as err:
            if resume:
                err.args = (f"{self.recipe}: {err}",)  # its class kept (a caller may catch a subclass)
            raise

    def load_recipe(self) -> Recipe:
        if not self.root.exists():
            raise UserError(f"{self.root}: no such run directory")
        if not self.recipe.exists():
            raise UserError(f"{self.root}: not a run directory (no recipe.yaml)")
        return _saved_recipe(self.recipe)

    def copy_schema(self, prepared_root: Path, recipe: Recipe) -> None:
        """Copies the fitted schema, vocabularies, data report and the encoding's key (the
        input files' stamps, which ``check_resumed_data`` compares) next to the checkpoints,
        with a copy of the recipe the run begins with (``edit_since_start`` compares it)."""
        with atomic_path(self.schema) as tmp:
            tmp.mkdir()
            (tmp / "recipe.yaml").write_text(yaml.safe_dump(_as_kept(recipe), sort_keys=False))
            for name in ("schema.json", "counts.npz", "report.json", KEY_FILE):
                if name != KEY_FILE or (prepared_root / name).exists():
                    shutil.copy2(prepared_root / name, tmp / name)
            shutil.copytree(prepared_root / "vocab", tmp / "vocab")

    def keep_data(self, recipe: Recipe, prepared_root: Path, resume: bool) -> None:
        """Writes the recipe and copies the schema of the data at ``prepared_root`` (a resumed
        run keeps its schema: ``check_resumed_inputs`` refused one whose schema is gone)."""
        self.write_recipe(recipe)
        if not resume:
            self.copy_schema(prepared_root, recipe)

    def check_start(self, recipe: Recipe, resume: bool) -> None:
        """Refuses, before any work, a run directory that does not fit ``resume``: a finished
        or unstarted run to resume, a resume of another recipe than the run's (its world size
        aside) or of an edited ``recipe.yaml``; a new run in a folder that holds one, or
        files that are not a run's."""
        if resume and self.metrics.exists():
            raise UserError(f"{self.root}: this run is finished (metrics.json is written); nothing to resume")
        if resume and not self.started:
            raise UserError(f"{self.root}: nothing to resume (no checkpoint written yet: no checkpoints/last.ckpt, "
                            "checkpoints/last (a distributed run's), stage checkpoint or finished stage in stages/)")
        edit = self.edit_since_start() if resume else None
        if edit:
            raise UserError(f"{self.recipe}: edited since the run began ({edit}); a resume trains the settings the "
                            "run began with: undo the edit, or train the new settings as a new run")
        change = self.settings_change(recipe, ignoring=RESUME_OVERRIDES) if resume else None
        if change:
            raise UserError(f"{self.root}: begun with another recipe ({change}); a resume goes on with the run's "
                            "own recipe.yaml (RunDir(run).load_recipe(), as ctr train --resume does)")
        if not resume and self.holds_run:
            raise UserError(f"{self.root}: already holds a run; continue it with --resume or choose another --out")
        foreign = [] if resume else self.foreign_entries()
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise UserError(f"{self.root}: a folder that is not a run directory (it holds {shown}); choose another "
                            "--out")

    def check_resumed_inputs(self, data: DataConfig) -> None:
        """Refuses, before any data is read, to resume on other rows than the run began with
        (its saved key): drawn otherwise by a generated dataset's generator now, or read from
        input files changed, added or removed since; or a started run whose schema/ is gone
        (written before its first checkpoint: nothing to compare the data with)."""
        if self.started and not self.schema.is_dir():
            raise UserError(f"{self.root}: its schema/ is gone (the encoding and input files the run began with); a "
                            "resumed run trains on the data it began with: restore it, or train a new run")
        source = self.saved_source()
        if source is None:
            return
        generator = generator_change(source, data)
        if generator:
            raise UserError(f"{self.root}: {generator}; a resumed run trains on the data it began with: train a "
                            "new run")
        change = input_change(source, source_fingerprint(data))
        if change:
            raise UserError(f"{self.root}: {change} since the run began; a resumed run trains on the data it began "
                            "with: restore it, or train a new run")

    def saved_source(self) -> dict[str, Any] | None:
        """What identified the raw input this run began on (the ``source`` of its saved key:
        the input files' stamps, a generated dataset's generator version), read once per
        check; None for a run with no key (none yet, or of an earlier ctr)."""
        saved = self.schema / KEY_FILE
        return saved_value(saved, "source") if saved.exists() else None

    def inputs_changed(self, data: DataConfig) -> str | None:
        """How the input files of ``data`` (or its dataset plugin's code) differ from those this
        run began on (``input_change`` of its saved key); None when the same, or for a run with
        no key (none yet, or of an earlier ctr)."""
        source = self.saved_source()
        return input_change(source, source_fingerprint(data)) if source is not None else None

    def check_compared_inputs(self, data: DataConfig, out: Path) -> None:
        """Refuses, for a command that compares many runs in ``out`` (tune, bench), a run begun
        on input files changed since (``inputs_changed``): its result, of the old rows, would be
        compared with runs on the new ones."""
        change = self.inputs_changed(data)
        if change:
            raise UserError(f"{out}: {self.root.name} trained on other data ({change}); its result would be compared "
                            "with runs on the data as it is now: restore it, or choose another --out")

    def drawn_otherwise(self, data: DataConfig) -> str | None:
        """How the rows this run began on differ from those its generated dataset's generator
        draws for ``data`` now (``generator_change`` of its saved key); None when the same, for
        data read from files, or for a run with no key (none yet, or of an earlier ctr)."""
        source = self.saved_source()
        return generator_change(source, data) if source is not None else None

    def set_aside(self, folder: Path) -> Path:
        """Moves this run into ``folder`` (made if missing) under a name no run there holds,
        keeping what it wrote (copied, then removed, across file systems); the new path."""
        folder.mkdir(parents=True, exist_ok=True)
        kept = folder / self.root.name
        number = 1
        while kept.exists():
            number += 1
            kept = folder / f"{self.root.name}-{number}"
        return Path(shutil.move(self.root, kept))

    def check_resumed_world(self, world_size: int) -> None:
        """Refuses to resume a run trained in one process (Lightning's ``.ckpt`` checkpoints) in
        several: the distributed loop reads only its own (DCP) checkpoints and began it again."""
        if world_size > 1 and self.lightning_checkpoints():
            raise UserError(f"{self.root}: trained in one process (checkpoints/*.ckpt); it resumes in one process "
                            f"only: give no -o trainer.devices / trainer.num_nodes, and set both to 1 in {self.recipe}")

    def check_resumed_encoding(self, prepared_root: Path) -> None:
        """Refuses to resume a run whose data another pipeline version encoded (its key's
        ``version``; a run saved without a key, by an earlier ctr) when its fitted schema or
        data report differs from the data's encoding now."""
        key = self.schema / KEY_FILE
        if not self.schema.is_dir() or key.exists() and saved_value(key, "version") == PIPELINE_VERSION:
            return
        for name in ("schema.json", "report.json"):
            if saved_value(self.schema / name) != json.loads((prepared_root / name).read_text()):
                raise UserError(f"{self.root}: its data now encodes differently than when the run began (schema/{name} "
                                "differs); a resumed run trains on the data it began with: restore it, or train a new run")

    @contextmanager
    def undone_on_refusal(self) -> Iterator[None]:
        """Inside, a refusal (a UserError; not a diverged loss, a training's outcome) before the
        run trained anything to resume (not ``started``: a check of the prepared data, a model's
        first batch) leaves the folder as it was: what was made in it inside (its recipe.yaml,
        schema/, logs/, a multi-stage run's stages/) is removed, and the folder itself when it
        was made inside. What it held before stays, but for the entries the run replaced (a
        recipe.yaml an earlier refused run left). Only one process may write the folder inside
        (``exclusive``)."""
        before = set(os.listdir(self.root)) if self.root.is_dir() else None
        try:
            yield
        except UserError as err:
            if not isinstance(err, TrainingDiverged) and not self.started:
                try:
                    self._remove_made(before)
                except OSError as failed:  # the refusal stays the line the user reads
                    log.warning("could not remove %s, which the refused run wrote (%s)", self.root, reason(failed))
            raise

    def _remove_made(self, before: set[str] | None) -> None:
        """Removes the entries of the folder not in ``before`` (the folder's names then; None:
        it did not exist, and goes too)."""
        if not self.root.is_dir():
            return
        if before is None:
            shutil.rmtree(self.root)
            return
        for name in set(os.listdir(self.root)) - before:
            path = self.root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()

    def exclusive(self) -> AbstractContextManager[None]:
        """Holds the run directory for this process while it trains: another ``ctr`` process
        asking for it meanwhile is refused (two trainings in one folder interleave their logs
        and checkpoints)."""
        return held(self.root, "is training in this run directory")

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write(self.metrics, metrics_json(metrics) + "\n")

    def read_metrics(self) -> dict[str, Any]:
        """The run's metrics.json; a UserError naming it when it is not a whole report (cut
        short, not JSON, not an object)."""
        try:
            return metrics_from_json(self.metrics.read_text())
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, not an object
            raise UserError(f"{self.metrics}: not a readable metrics.json ({reason(err, typed=True)})") from None
