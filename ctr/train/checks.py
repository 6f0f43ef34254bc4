"""Checks that refuse a run before it trains, from what only the prepared data or the built
network shows (the recipe's own checks run when it is read): every one is a one-line error,
and nothing trains or writes a stage before them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from ctr.datasets import Prepared
from ctr.embeddings.stages import Stage
from ctr.errors import DataError, RecipeError
from ctr.models.layers import Dice
from ctr.recipe import Recipe
from ctr.recipe.schedules import PlateauSchedule

if TYPE_CHECKING:  # the Lightning module's file: ctr train's launcher runs these checks without Lightning
    from ctr.train.net import CTRNet

ONE_CLASS_UNDEFINED = ("valid/auc", "valid/gauc")  # metrics that need both labels in the split
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
TRAINING_MIN_ROWS = 2  # a last training batch of one row per process is dropped: BatchNorm and Dice need two


def check_batch_split(recipe: Recipe, world_size: int) -> None:
    """Refuses batches that ``world_size`` processes cannot share equally (each takes its slice)."""
    train = recipe.train
    if train.batch_size % world_size or train.eval_batch_size % world_size:
        raise RecipeError(f"train.batch_size: {train.batch_size} and eval_batch_size {train.eval_batch_size} must be"
                          f" multiples of the {world_size} processes")


def require_rows(recipe: Recipe, prepared: Prepared, splits: tuple[str, ...]) -> None:
    """Refuses a split without rows, naming the recipe keys that give it rows."""
    for split in splits:
        if prepared.report["splits"][split]["rows"] == 0:
            if split == "train":
                hint = "every row went to validation or test"
            else:
                path_key = f", or data.{split}_path" if hasattr(recipe.data, f"{split}_path") else ""
                hint = f"data.split.{split} above 0{path_key}"
            raise DataError(f"data: the {split} split holds no rows ({hint})")


def check_schedule_floors(recipe: Recipe, net: CTRNet) -> None:
    """Refuses a schedule whose ``min_lr`` (the lr it falls to) is above the lr of an
    optimizer it schedules: it would raise that lr (cosine, linear_warmup) or never lower it
    (plateau). The embedding optimizer counts where ``net``'s method has rows for it to step
    (or the update is fused). For a new run, one process or several: a resumed one goes on
    with the schedule it had."""
    train = recipe.train
    rows = any(p.requires_grad for p in net.embedding.sparse_parameters())
    parts = {"dense": "optimizer", **({"embedding": "embedding_optimizer"} if rows or
                                      train.embedding_optimizer.fused else {})}
    for part, name in parts.items():
        floor, lr = getattr(train.schedule_of(part), "min_lr", 0.0), getattr(train, name).lr
        if floor > lr:
            key = "embedding_scheduler" if part == "embedding" and train.embedding_scheduler else "scheduler"
            raise RecipeError(f"train.{key}.min_lr: {floor:g} is above train.{name}.lr {lr:g}, the lr it falls "
                              "from; use a min_lr below it")


def check_before_fit(recipe: Recipe, prepared: Prepared, batches: int, net: CTRNet, world_size: int) -> None:
    """Refuses what only the ``prepared`` data (an epoch's ``batches``) or the built ``net`` shows
    to be wrong, before anything trains or a stage writes its files."""
    if batches == 0:
        rows = prepared.report["splits"]["train"]["rows"]
        if recipe.trainer.compile:
            raise _compile_refusal(recipe, "train", rows, "training")
        shared = f" over {world_size} processes" if world_size > 1 else ""
        counted = f"{rows} row{shared} makes" if rows == 1 else f"{rows} rows{shared} make"
        raise DataError(f"data: the train split's {counted} no training batch (a last batch of fewer than "
                        f"{TRAINING_MIN_ROWS} rows a process is dropped)")
    _check_two_classes(prepared)
    every = recipe.train.eval_every_n_steps
    if every and every > batches:  # it counts within the epoch
        raise RecipeError(f"train.eval_every_n_steps: {every} is more than the {batches} batches of an epoch")
    stages = net.embedding.stages()
    _check_stage_settings(recipe, net, stages)
    _check_monitor_defined(recipe, prepared, searches=any(stage.kind == "procedure" for stage in stages))
    valid_rows = prepared.report["splits"]["valid"]["rows"]
    bilevel = any(stage.bilevel for stage in stages)
    if bilevel and recipe.trainer.compile and valid_rows < recipe.train.batch_size:
        search = f"{recipe.embedding.method}'s search, which trains on validation batches,"
        raise _compile_refusal(recipe, "valid", valid_rows, search)
    if bilevel and valid_rows // world_size < TRAINING_MIN_ROWS:
        rows = f"{valid_rows} row" + ("s are" if valid_rows != 1 else " is")
        raise DataError(f"data: the valid split's {rows} too few for {recipe.embedding.method}'s search, "
                        f"which trains on validation batches of at least {TRAINING_MIN_ROWS} rows a process")
    size = recipe.train.batch_size
    if size // world_size < TRAINING_MIN_ROWS and _has_batch_norm(net):
        shared = f" over {world_size} processes gives each {size // world_size} rows" if world_size > 1 else ""
        raise RecipeError(f"train.batch_size: {size}{shared}; the model's BatchNorm needs at least "
                          f"{TRAINING_MIN_ROWS} rows a batch in each process (a larger batch, or "
                          "model.batch_norm: false where the model has it)")


def _check_two_classes(prepared: Prepared) -> None:
    """Refuses a train split whose labels are all one class, naming its cache entry: a model
    learns nothing from it (a wrong ``data.label``, or an entry encoded from such rows)."""
    train = prepared.report["splits"]["train"]
    if train["positive_rate"] not in (0.0, 1.0):
        return
    labels = "clicks (label 1)" if train["positive_rate"] else "non-clicks (label 0)"
    raise DataError(f"data: the train split's {train['rows']} rows are all {labels} (encoded in {prepared.root}); a "
                    f"model learns nothing from one class: check data.label ({prepared.schema.label!r}) and the "
                    "input rows")


def _compile_refusal(recipe: Recipe, split: str, rows: int, use: str) -> RecipeError:
    """``train.batch_size`` above the ``rows`` of ``split`` under ``trainer.compile`` (one
    process only), whose training loaders drop an epoch's smaller last batch: ``use`` (the
    training, a bilevel search) would get no batch of that split."""
    return RecipeError(f"train.batch_size: {recipe.train.batch_size} is more than the {split} split's {rows} rows, and "
                       f"trainer.compile drops an epoch's smaller last batch: {use} gets no batch; use a smaller "
                       "batch_size or trainer.compile: false")


def _check_stage_settings(recipe: Recipe, net: CTRNet, stages: list[Stage]) -> None:
    """Refuses ``embedding.stages`` settings of a procedure stage: it takes no gradient steps,
    so its epochs and max_steps would be ignored."""
    named = getattr(recipe.embedding, "stages", {})
    training = ", ".join(stage.name for stage in stages if stage.kind == "train")
    for stage in stages:
        if stage.kind == "procedure" and stage.name in named:
            raise RecipeError(f"embedding.stages.{stage.name}: {recipe.embedding.method}'s {stage.name} stage is a "
                              f"procedure without gradient steps, so it takes no epochs or max_steps "
                              f"(its training stages: {training})")


def _has_batch_norm(net: nn.Module) -> bool:
    """Whether ``net`` holds a BatchNorm that raises on one training row (Dice's handles one)."""
    in_dice = {id(m.norm) for m in net.modules() if isinstance(m, Dice)}
    return any(isinstance(m, BATCH_NORMS) and id(m) not in in_dice for m in net.modules())


def _check_monitor_defined(recipe: Recipe, prepared: Prepared, searches: bool) -> None:
    """Refuses a monitored metric the run never logs (a group AUC without groups), and an AUC
    on a validation split of one class: it is undefined (nan)
    there, so early stopping would end the run at its first validation, the best checkpoint
    would be arbitrary, and a method that ``searches`` (a procedure stage, scored by AUC)
    would rank every candidate by nan."""
    valid = prepared.report["splits"]["valid"]
    monitors = _monitors(recipe)
    if searches:
        monitors[f"embedding.method: {recipe.embedding.method}'s search"] = "valid/auc"
    for key, monitor in monitors.items():
        if monitor == "valid/gauc" and not prepared.schema.group:
            raise RecipeError(f"{key}: valid/gauc needs groups; name their column in data.group")
        if monitor in ONE_CLASS_UNDEFINED and valid["positive_rate"] in (0.0, 1.0):
            label = "click (label 1)" if valid["positive_rate"] else "non-click (label 0)"
            rows = "has 1 row, a" if valid["rows"] == 1 else f"has {valid['rows']} rows, all"
            labels = label if valid["rows"] == 1 else label.replace("click ", "clicks ")
            source = "data.valid_path" if getattr(recipe.data, "valid_path", None) else "data.split.valid"
            raise DataError(f"data: the valid split {rows} {labels}, so {monitor} ({key}) is undefined; give "
                            f"validation more rows ({source}) or monitor valid/logloss")


def _monitors(recipe: Recipe) -> dict[str, str]:
    """Recipe key → the metric it monitors: early stopping's (without it, the best
    checkpoint's ``valid/auc``) and each plateau schedule's (by default early stopping's)."""
    best = "train.early_stop.monitor" if recipe.train.early_stop else "the best checkpoint's monitor"
    found = {best: recipe.train.best_by[0]}
    for key in ("scheduler", "embedding_scheduler"):
        config = getattr(recipe.train, key)
        if isinstance(config, PlateauSchedule):
            found[f"train.{key}.monitor"] = config.monitor or found[best]
    return found
