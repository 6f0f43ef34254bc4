"""The ``recipe.yaml`` of runs saved by earlier versions of ctr, brought to the current keys
so that ``ctr eval``, ``predict``, ``export`` and ``--resume`` still read them. Each rule
says what changed; the values a saved run trained with are kept where they still mean it."""

from __future__ import annotations

import dataclasses
from typing import Any

from ctr.recipe import DataConfig, import_recipe_plugins
from ctr.recipe.checks import generates_rows, reads_backend, splits_itself
from ctr.registry import DATASETS, EMBEDDINGS

LOSS_MONITORS = ("valid/logloss", "train/loss")
FULL_PRECISIONS = ("64", "64-true", "16-true", "bf16-true")  # whole-model precisions no longer taken


def upgraded(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` (a saved recipe, changed in place) in the current keys."""
    _split_seed(raw)
    import_recipe_plugins(raw)  # a plugin's method or dataset is then known to the rules below
    _embedding_keys(raw.get("embedding") or {})
    _generated_path(raw.get("data") or {})
    _own_split(raw.get("data") or {})
    _monitor_modes(raw.get("train") or {})
    _din_input_norm(raw.get("model") or {})
    trainer = raw.get("trainer") or {}
    if str(trainer.get("precision")) in FULL_PRECISIONS:  # its weights load into fp32 (a dtype copy)
        trainer["precision"] = "32-true"
    return raw


def _split_seed(raw: dict[str, Any]) -> None:
    """``data.split.seed`` is new: before it, the split followed the recipe's seed, and a
    ``movielens`` split followed a ``data.seed`` of its own."""
    data = raw.get("data") or {}
    split = data.get("split")
    if data.get("dataset") == "movielens" and "seed" in data:
        data["split"] = {**(split if isinstance(split, dict) else {}), "seed": data.pop("seed")}
    elif isinstance(split, dict) and "seed" not in split:
        split["seed"] = raw.get("seed", 42)


def _embedding_keys(embedding: dict[str, Any]) -> None:
    """``int8`` / ``int16`` fix their bits (``digit`` was a key: ``int8`` with 16 trained
    16-bit rows, an ``int16`` table); ``arch_optimizer`` is a key of methods with
    architecture parameters only (the others saved the default, unused); ``backend`` is a
    key of methods that look up through the kernels only (the others saved it, unread)."""
    method = embedding.get("method")
    if method in ("int8", "int16") and "digit" in embedding:
        embedding["method"] = "int16" if embedding.pop("digit") == 16 else "int8"
    if "arch_optimizer" in embedding and method in EMBEDDINGS:
        keys = {field.name for field in dataclasses.fields(EMBEDDINGS.get(method).config)}
        if "arch_optimizer" not in keys:
            del embedding["arch_optimizer"]
    unread = isinstance(method, str) and method in EMBEDDINGS and not reads_backend(method)
    if unread and embedding.get("backend") is not None:
        del embedding["backend"]


def _generated_path(data: dict[str, Any]) -> None:
    """``data.path`` is a key of datasets that read files only: runs of a dataset that
    generates its rows (``synthetic``, the default) saved it, unread."""
    dataset = data.get("dataset", DataConfig.dataset)
    known = isinstance(dataset, str) and dataset in DATASETS
    if known and generates_rows(dataset) and data.get("path") is not None:
        del data["path"]


def _own_split(data: dict[str, Any]) -> None:
    """``data.split.valid`` and ``test`` are keys of datasets that do not split their rows
    themselves: runs of one that does (``amazon``) saved them, unread (its seed is kept)."""
    dataset, split = data.get("dataset", DataConfig.dataset), data.get("split")
    if isinstance(dataset, str) and dataset in DATASETS and splits_itself(dataset) and isinstance(split, dict):
        for key in ("valid", "test"):
            split.pop(key, None)


def _monitor_modes(train: dict[str, Any]) -> None:
    """A mode follows its monitor now; runs saved the default ``max`` for a loss too."""
    stop = train.get("early_stop")
    if isinstance(stop, dict) and stop.get("monitor") in LOSS_MONITORS and stop.get("mode") == "max":
        del stop["mode"]
    for key in ("scheduler", "embedding_scheduler"):
        schedule = train.get(key)
        if isinstance(schedule, dict) and schedule.get("monitor") == "valid/logloss" and schedule.get("mode") == "max":
            del schedule["mode"]


def _din_input_norm(model: dict[str, Any]) -> None:
    """DIN's ``input_norm`` is new: the ``authors`` form batch-normalised its top input
    before (its default now is the authors' inference-mode normalisation)."""
    if model.get("name") == "din" and model.get("variant") == "authors" and "input_norm" not in model:
        model["input_norm"] = "batch"
