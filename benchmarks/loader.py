"""Loader throughput against a plain pandas → tensor baseline and against DLRM training.

Everything is measured in the same run on the same encoded data (synthetic rows written as
Criteo DAC TSV by ``ctr data synth`` and prepared by the ``criteo`` reader), so the ratios
are meaningful on a shared, noisy machine. Run it alone:

    flock /tmp/ctr-heavy.lock .venv/bin/python -m benchmarks.loader --rows 1000000

Reports rows/s of ``BatchLoader`` (training order: seeded row-group order and shuffle
buffer; and evaluation order), of the baseline (the whole split in a pandas DataFrame,
a permutation per epoch, ``df.iloc`` per batch, then ``torch.tensor``), and DLRM's training
samples/s (forward, backward and optimizer steps on batches already in memory). Last, the
peak memory of one training epoch of the loader (numpy allocations traced by tracemalloc plus
Arrow's memory pool), against the size of the whole split packed in memory.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import torch.nn.functional as F

from ctr.batch import Batch, JaggedFeatures
from ctr.datasets import BatchLoader, prepare
from ctr.datasets.encode import LABEL
from ctr.datasets.shards import shard_files
from ctr.datasets.synthetic_tsv import write_dac_tsv
from ctr.datasets.synthetic import SyntheticConfig
from ctr.recipe import recipe_from_dict
from ctr.train.task import CTRTask


def main() -> None:
    args = _arguments()
    torch.manual_seed(0)
    tsv = args.work / f"criteo-synth-{args.rows}.tsv"
    if not tsv.exists():
        args.work.mkdir(parents=True, exist_ok=True)
        write_dac_tsv(tsv, SyntheticConfig(rows=args.rows, vocab_scale=args.vocab_scale))
    recipe = recipe_from_dict({
        "data": {"dataset": "criteo", "path": str(tsv), "cache_dir": str(args.work / "cache")},
        "model": {"name": "dlrm"},
        "train": {"batch_size": args.batch_size},
    })
    prepared = prepare(recipe.data, progress=False)
    folder, schema, size = prepared.split_dir("train"), prepared.schema, args.batch_size
    results = {
        "ctr BatchLoader, training order": _rate(BatchLoader(folder, schema, size, shuffle=True, seed=1), args.epochs),
        "ctr BatchLoader, evaluation order": _rate(BatchLoader(folder, schema, size), args.epochs),
        "pandas -> tensor baseline": _rate(PandasLoader(folder, schema, size), args.epochs),
    }
    batches = list(_first(BatchLoader(folder, schema, size, shuffle=True), 8))
    results["DLRM training (samples/s)"] = _dlrm_rate(recipe, schema, batches, args.steps)
    _report(results, prepared.report["splits"]["train"]["rows"], size)
    peak = _peak_memory(BatchLoader(folder, schema, size, shuffle=True, seed=1))
    packed = prepared.report["splits"]["train"]["rows"] * BatchLoader(folder, schema, size).layout.width * 4
    print(f"peak memory of a training epoch (numpy and Arrow): {peak / 2**20:,.0f} MiB "
          f"(the split packed in memory would take {packed / 2**20:,.0f} MiB)")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows (80%% become the training split)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per loader (the median is reported)")
    parser.add_argument("--steps", type=int, default=20, help="DLRM training steps timed")
    parser.add_argument("--vocab-scale", type=float, default=1.0, help="of the Criteo-like vocabulary sizes")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ctr-bench"), help="data and cache folder")
    return parser.parse_args()


class PandasLoader:
    """The baseline: a DataFrame of the split, shuffled per epoch, ``iloc`` then ``torch.tensor``."""

    def __init__(self, folder: Path, schema, batch_size: int):
        self.frame = pd.concat([pd.read_parquet(f) for f in shard_files(folder)], ignore_index=True)
        self.dense = [f.spec.name for f in schema.dense_features]
        self.sparse = [f.spec.name for f in schema.sparse_features]
        self.batch_size = batch_size
        self.rows = len(self.frame)
        self.epoch = 0

    def __iter__(self):
        order = np.random.default_rng(self.epoch).permutation(self.rows)
        self.epoch += 1
        for start in range(0, self.rows, self.batch_size):
            part = self.frame.iloc[order[start : start + self.batch_size]]
            ids = torch.tensor(part[self.sparse].to_numpy(np.int64))
            yield Batch(
                dense=torch.tensor(part[self.dense].to_numpy(np.float32)),
                sparse=JaggedFeatures.from_dense(self.sparse, ids),
                labels=torch.tensor(part[LABEL].to_numpy(np.float32)),
            )


def _rate(loader, epochs: int) -> float:
    """Median rows/s over ``epochs`` full passes."""
    rates = []
    for _ in range(epochs):
        start, rows = time.perf_counter(), 0
        for batch in loader:
            rows += batch.size
        rates.append(rows / (time.perf_counter() - start))
    return float(np.median(rates))


def _peak_memory(loader) -> int:
    """Peak bytes held by numpy (tracemalloc) plus Arrow's pool while iterating one epoch."""
    tracemalloc.start()
    arrow_peak = 0
    for _ in loader:
        arrow_peak = max(arrow_peak, pa.total_allocated_bytes())
    _, numpy_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return numpy_peak + arrow_peak


def _first(loader, count: int):
    for i, batch in enumerate(loader):
        if i == count:
            return
        yield batch


def _dlrm_rate(recipe, schema, batches: list[Batch], steps: int) -> float:
    """DLRM (the paper's Criteo MLPs, full embeddings) training samples/s."""
    task = CTRTask(recipe, schema)
    optimizer = task.configure_optimizers()
    samples, elapsed = 0, 0.0
    for step in range(steps + 2):
        batch = batches[step % len(batches)]
        start = time.perf_counter()
        logits, reg = task.net(batch)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels) + reg
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= 2:  # the first steps warm up allocators and caches
            elapsed += time.perf_counter() - start
            samples += batch.size
    return samples / elapsed


def _report(results: dict[str, float], rows: int, batch_size: int) -> None:
    ours, base = results["ctr BatchLoader, training order"], results["pandas -> tensor baseline"]
    dlrm = results["DLRM training (samples/s)"]
    print(f"training split: {rows:,} rows, Criteo schema (13 numeric, 26 categorical), batch {batch_size}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'':<36}{'rows/s':>14}")
    for name, rate in results.items():
        print(f"{name:<36}{rate:>14,.0f}")
    print(f"ratio ctr / pandas baseline (training order): {ours / base:.1f}x")
    print(f"ratio ctr loader / DLRM training samples/s:   {ours / dlrm:.1f}x")


if __name__ == "__main__":
    main()
