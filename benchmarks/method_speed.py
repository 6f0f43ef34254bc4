"""Two embedding methods' hot paths against their straightforward form, in the same run:
the pruning selection (``largest_mask`` vs a ``torch.topk`` mask) in time and peak resident
memory, DHE's lookup (the decoder once per distinct id with occurrence-weighted BatchNorm
statistics vs the decoder on every occurrence) and MGQE's
nearest-centroid search (once per distinct row vs per occurrence) in time.
Prints ratios; each selection runs in its own process so that its peak memory is its own.

    .venv/bin/python -m benchmarks.method_speed --entries 54000000 --batch 4096
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from ctr.embeddings.largest import largest_mask


def topk_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros(values.numel(), dtype=torch.bool)
    mask[torch.topk(values, k).indices] = True
    return mask


def select_once(way: str, entries: int, share: float) -> dict[str, float]:
    """One selection of the ``share`` largest of ``entries`` |N(0,1)| values: seconds and the
    process's peak RSS above what holding the values cost."""
    values = torch.randn(entries, generator=torch.Generator().manual_seed(0)).abs_()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    mask = (largest_mask if way == "largest" else topk_mask)(values, int(share * entries))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "extra_mib": (peak - before) / 1024, "kept": int(mask.sum())}


def selection(entries: int, share: float) -> dict[str, dict[str, float]]:
    results = {}
    for way in ("topk", "largest"):
        code = f"import json, benchmarks.method_speed as m; print(json.dumps(m.select_once({way!r}, {entries}, {share})))"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        results[way] = json.loads(done.stdout)
    assert results["topk"]["kept"] == results["largest"]["kept"]
    return results


def one_table_method(name: str, vocab: int = 1_000_000):
    """``name`` at budget 0.1 and D = 16 on one feature of ``vocab`` ids (Zipf counts)."""
    import numpy as np

    from ctr.registry import EMBEDDINGS
    from ctr.schema import FeatureInfo, FeatureSpec, Schema

    counts = (1e6 / np.arange(1, vocab + 1)).astype(np.int64)
    schema = Schema(features=[FeatureInfo(FeatureSpec(name="item"), vocab_size=vocab, table="item")],
                    label="y", counts={"item": counts})
    entry = EMBEDDINGS.get(name)
    return entry.target(schema, entry.config(dim=16, budget=0.1))


def seconds_per_call(ways: dict[str, object], repeats: int) -> dict[str, float]:
    seconds = {}
    for name, call in ways.items():
        call()
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        seconds[name] = (time.perf_counter() - start) / repeats
    return seconds


def dhe_lookup(batch: int, distinct: int, repeats: int) -> dict[str, float]:
    """Seconds per forward + backward of DHE's lookup on ``batch`` ids drawn from ``distinct``."""
    method = one_table_method("dhe")
    ids = torch.randint(distinct, (batch,), generator=torch.Generator().manual_seed(0))
    feature = torch.zeros(batch, dtype=torch.long)
    return seconds_per_call({
        "per_occurrence": lambda: method.decoder(method.encode(feature, ids)).sum().backward(),
        "per_distinct_id": lambda: method.embed_ids(feature, ids).sum().backward(),
    }, repeats)


def mgqe_search(batch: int, distinct: int, repeats: int) -> dict[str, float]:
    """Seconds per nearest-centroid search of MGQE for ``batch`` rows drawn from ``distinct``."""
    method = one_table_method("mgqe")
    rows = torch.randint(distinct, (batch,), generator=torch.Generator().manual_seed(0))
    tables = torch.zeros(batch, dtype=torch.long)
    parts = method.weight.detach()[rows].view(batch, method.subspaces, -1).transpose(0, 1)
    return seconds_per_call({
        "per_occurrence": lambda: method._nearest(0, parts, method.frequent[rows]),
        "per_distinct_id": lambda: method.assign(tables, rows),
    }, repeats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=54_000_000)
    parser.add_argument("--share", type=float, default=0.5, help="share of entries kept")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--distinct", type=int, default=1000, help="ids the batch draws from")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    chosen = selection(args.entries, args.share)
    top, ours = chosen["topk"], chosen["largest"]
    print(f"selection of {args.share:g} of {args.entries:,} entries: topk {top['seconds']:.2f} s, "
          f"+{top['extra_mib']:.0f} MiB; largest_mask {ours['seconds']:.2f} s, +{ours['extra_mib']:.0f} MiB; "
          f"time x{top['seconds'] / ours['seconds']:.2f}, memory x{top['extra_mib'] / max(ours['extra_mib'], 1):.1f}")
    dhe = dhe_lookup(args.batch, args.distinct, args.repeats)
    print(f"dhe lookup, {args.batch} ids of {args.distinct} distinct: per occurrence {dhe['per_occurrence'] * 1e3:.0f} ms, "
          f"per distinct id {dhe['per_distinct_id'] * 1e3:.0f} ms; x{dhe['per_occurrence'] / dhe['per_distinct_id']:.2f}")
    rows = args.batch * 26
    search = mgqe_search(rows, args.distinct * 26, args.repeats)
    print(f"mgqe search, {rows} rows of {args.distinct * 26} distinct: per occurrence {search['per_occurrence'] * 1e3:.0f} ms, "
          f"per distinct row {search['per_distinct_id'] * 1e3:.0f} ms; x{search['per_occurrence'] / search['per_distinct_id']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
