"""Preprocessing rows/s and peak memory at growing sizes of Criteo-format TSV.

For each size, synthetic rows are written as raw Criteo DAC TSV (``ctr data synth``, not
timed), then ``ctr data prepare`` runs in a child process with an empty cache; the child's
wall time and peak resident memory (``ru_maxrss``) are reported, and each size's time is
compared with the smallest size's, scaled by rows (1.0 = exactly linear). Run it alone:

    flock /tmp/ctr-heavy.lock .venv/bin/python -m benchmarks.preprocess --rows 1000000 10000000
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ctr.datasets.synthetic_tsv import write_dac_tsv
from ctr.datasets.synthetic import SyntheticConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/ctr-bench"), help="data and cache folder")
    parser.add_argument("--keep", action="store_true", help="keep the encoded data")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for rows in args.rows:
        tsv = args.work / f"criteo-synth-{rows}.tsv"
        if not tsv.exists():
            write_dac_tsv(tsv, SyntheticConfig(rows=rows))
        seconds, peak = _prepare(tsv, args.work / f"prepare-{rows}", args.keep)
        results.append((rows, tsv.stat().st_size, seconds, peak))
        print(f"{rows:>12,} rows: {seconds:8.1f} s  {rows / seconds:>10,.0f} rows/s  peak RSS {peak / 2**30:.2f} GiB", flush=True)
    _report(results)


def _prepare(tsv: Path, cache: Path, keep: bool) -> tuple[float, int]:
    """Runs ``ctr data prepare`` on ``tsv`` in a child; returns (seconds, peak RSS in bytes)."""
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    recipe = cache / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"dataset": "criteo", "path": str(tsv), "cache_dir": str(cache)}}))
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "ctr.cli", "data", "prepare", str(recipe)], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"ctr data prepare failed on {tsv}")
    if not keep:
        shutil.rmtree(cache, ignore_errors=True)
    return seconds, usage.ru_maxrss * 1024


def _report(results: list[tuple[int, int, float, int]]) -> None:
    base_rows, _, base_seconds, _ = results[0]
    print(f"\n{'rows':>12}{'TSV MB':>10}{'seconds':>10}{'rows/s':>12}{'peak RSS GiB':>14}{'time / linear':>15}")
    for rows, size, seconds, peak in results:
        linear = base_seconds * rows / base_rows
        print(f"{rows:>12,}{size / 1e6:>10,.0f}{seconds:>10.1f}{rows / seconds:>12,.0f}{peak / 2**30:>14.2f}{seconds / linear:>15.2f}")


if __name__ == "__main__":
    main()
