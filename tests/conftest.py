"""Shared fixtures: a tiny synthetic dataset prepared once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctr.recipe import recipe_from_dict

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
