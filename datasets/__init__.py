"""ctr.datasets: readers, preprocessing, the encoded store, the loader and built-in datasets.

Built-in datasets register themselves when ``ctr.registry.DATASETS`` looks their name up.
``BatchLoader``, ``Prepared`` and ``prepare`` are imported on first use, so that a dataset
module can be loaded without the loader and the preprocessing pipeline.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"BatchLoader": "ctr.datasets.loader", "Prepared": "ctr.datasets.preprocess", "prepare": "ctr.datasets.preprocess"}

__all__ = ["BatchLoader", "Prepared", "prepare"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'ctr.datasets' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
