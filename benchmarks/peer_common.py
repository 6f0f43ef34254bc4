"""What the peer benchmarks share: ctr's encoded columns as DeepCTR-Torch inputs, the same
optimizer split on both sides, timing and a results table.

Both sides read the same encoded arrays (ctr's prepared shards or the same synthetic rows):
ids are ctr's vocabulary codes (0 = padding, 1 = OOV), so DeepCTR-Torch's tables have the
same rows as ctr's.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.columns import Columns
from ctr.atomic import atomic_write
from ctr.schema import Schema
from ctr.train.optim import CombinedOptimizer

log = logging.getLogger("peer")


def deepctr_columns(schema: Schema, dim: int, init_std: float):
    """DeepCTR-Torch feature columns for ``schema``: one table per ctr table (shared ones by
    ``embedding_name``), sequences as VarLenSparseFeat (``pooling: none`` → attention input
    with ``<name>_length``; ``mean``/``sum`` → that combiner), numeric as DenseFeat."""
    from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat

    rows = schema.tables()
    columns = []
    for info in schema.features:
        spec = info.spec
        if spec.kind == "numeric":
            columns.append(DenseFeat(spec.name, 1))
            continue
        sparse = SparseFeat(spec.name, rows[info.table], embedding_dim=dim, embedding_name=info.table)
        if spec.kind == "categorical":
            columns.append(sparse)
            continue
        combiner = "mean" if spec.pooling == "none" else spec.pooling
        length = f"{spec.name}_length" if spec.pooling == "none" else None
        columns.append(VarLenSparseFeat(sparse, maxlen=spec.max_len, combiner=combiner, length_name=length))
    return columns


def deepctr_inputs(schema: Schema, cols: Columns) -> dict[str, np.ndarray]:
    """The arrays DeepCTR-Torch's ``fit``/``predict`` take, from ctr's encoded columns."""
    inputs: dict[str, np.ndarray] = {}
    for j, info in enumerate(schema.dense_features):
        inputs[info.spec.name] = cols.dense[:, j]
    cat = [f for f in schema.sparse_features if f.spec.kind == "categorical"]
    for j, info in enumerate(cat):
        inputs[info.spec.name] = cols.categorical[:, j].astype(np.int64)
    for info in schema.sparse_features:
        if info.spec.kind != "sequence":
            continue
        values, offsets = cols.sequences[info.spec.name]
        lengths = np.diff(offsets)
        padded = np.zeros((cols.rows, info.spec.max_len), dtype=np.int64)
        position = np.arange(values.shape[0]) - np.repeat(offsets[:-1], lengths)
        padded[np.repeat(np.arange(cols.rows), lengths), position] = values
        inputs[info.spec.name] = padded
        if info.spec.pooling == "none":
            inputs[f"{info.spec.name}_length"] = lengths.astype(np.int64)
    return inputs


def split_optimizer(model: nn.Module, dense_lr: float, embedding_lr: float) -> torch.optim.Optimizer:
    """ctr's setting for a DeepCTR-Torch model: Adam on dense parameters, Adagrad on the
    embedding tables (DeepCTR-Torch's tables get dense gradients: Adagrad leaves rows with a
    zero gradient unchanged, so the update equals ctr's sparse Adagrad)."""
    embedding = [p for n, p in model.named_parameters() if "embedding_dict" in n]
    ids = {id(p) for p in embedding}
    dense = [p for p in model.parameters() if id(p) not in ids]
    return CombinedOptimizer({"dense": torch.optim.Adam(dense, lr=dense_lr),
                              "embedding": torch.optim.Adagrad(embedding, lr=embedding_lr)})


@dataclass
class Result:
    """One side's figures in one run."""

    side: str
    seed: int
    test: dict[str, float]
    samples_per_s: float
    extra: dict[str, float] = field(default_factory=dict)


def summary_table(results: list[Result], keys: tuple[str, ...]) -> str:
    """Markdown table: per side, each metric's mean ± standard deviation over seeds (the value
    alone for one seed; "–" where a seed lacks the metric, as ``ctr tune`` shows them)."""
    lines = ["| side | seeds | " + " | ".join(f"test {k}" for k in keys) + " | train samples/s |",
             "|---|---|" + "---|" * (len(keys) + 1)]
    for side in dict.fromkeys(r.side for r in results):
        rows = [r for r in results if r.side == side]
        cells = [_mean_sd([r.test[k] for r in rows], 4) if all(k in r.test for r in rows) else "–" for k in keys]
        cells.append(_mean_sd([r.samples_per_s for r in rows], 0))
        lines.append(f"| {side} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_sd(values: list[float], digits: int) -> str:
    """Mean ± sample sd of ``values``; the value alone for one (the spread of one is undefined)."""
    mean = statistics.fmean(values)
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def write_json(path: Path, data: object) -> None:
    """Writes ``data`` as JSON atomically."""
    atomic_write(path, json.dumps(data, indent=1, default=float))


class Timer:
    """Accumulates wall-clock seconds of the ``with`` blocks it times."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._start
