"""Two embedding methods' hot paths against their straightforward form, in the same run:
the pruning selection (``largest_mask`` vs a ``torch.topk`` mask) in time and peak resident
memory, and DHE's lookup (first layer once per distinct id vs on every occurrence) in time.
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
    return {"seconds": seconds, "extra_mb": (peak - before) / 1024, "kept": int(mask.sum())}


def selection(entries: int, share: float) -> dict[str, dict[str, float]]:
    results = {}
    for way in ("topk", "largest"):
        code = f"import json, benchmarks.method_speed as m; print(json.dumps(m.select_once({way!r}, {entries}, {share})))"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        results[way] = json.loads(done.stdout)
    assert results["topk"]["kept"] == results["largest"]["kept"]
    return results


def dhe_lookup(batch: int, distinct: int, repeats: int) -> dict[str, float]:
    """Seconds per forward + backward of DHE's lookup on ``batch`` ids drawn from ``distinct``."""
    import numpy as np

    from ctr.registry import EMBEDDINGS
    from ctr.schema import FeatureInfo, FeatureSpec, Schema

    vocab = 1_000_000
    schema = Schema(features=[FeatureInfo(FeatureSpec(name="item"), vocab_size=vocab, table="item")],
                    label="y", counts={"item": np.ones(vocab, dtype=np.int64)})
    entry = EMBEDDINGS.get("dhe")
    method = entry.target(schema, entry.config(dim=16, budget=0.1))
    ids = torch.randint(distinct, (batch,), generator=torch.Generator().manual_seed(0))
    feature = torch.zeros(batch, dtype=torch.long)
    ways = {"per_occurrence": lambda: method.decoder(method.encode(feature, ids)),
            "per_distinct_id": lambda: method.embed_ids(feature, ids)}
    seconds = {}
    for name, lookup in ways.items():
        lookup().sum().backward()
        start = time.perf_counter()
        for _ in range(repeats):
            lookup().sum().backward()
        seconds[name] = (time.perf_counter() - start) / repeats
    return seconds


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
          f"+{top['extra_mb']:.0f} MB; largest_mask {ours['seconds']:.2f} s, +{ours['extra_mb']:.0f} MB; "
          f"time x{top['seconds'] / ours['seconds']:.2f}, memory x{top['extra_mb'] / max(ours['extra_mb'], 1):.1f}")
    dhe = dhe_lookup(args.batch, args.distinct, args.repeats)
    print(f"dhe lookup, {args.batch} ids of {args.distinct} distinct: per occurrence {dhe['per_occurrence'] * 1e3:.0f} ms, "
          f"per distinct id {dhe['per_distinct_id'] * 1e3:.0f} ms; x{dhe['per_occurrence'] / dhe['per_distinct_id']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
