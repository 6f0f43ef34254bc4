"""How soon ``ctr train`` on several processes starts its ranks, and how soon a rank starts
training, against the same with the training loop imported first (what the launcher did
before it kept to the recipe and the checks, and what every rank did before it trained
without Lightning).

Each sample is a fresh interpreter that runs ``ctr train RECIPE -o trainer.devices=2`` up to
the point where it would start its ranks (``launch.spawn`` stubbed: none is started), or,
with ``--rank``, as rank 0 of such a run up to the point where it would join the process
group (``distributed.train_in_group`` stubbed); once as ctr does it and once with
``ctr.train.runner`` (Lightning, torch._dynamo, the loop) imported first. The two kinds
alternate, so a shared, noisy machine slows both alike. Run it alone:

    .venv/bin/python -m benchmarks.launcher_start --samples 5
    .venv/bin/python -m benchmarks.launcher_start --samples 5 --rank

Prints the median seconds of each, their ratio, and the modules each had loaded.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile

LAUNCHER = """\
import sys, time
start = time.perf_counter()
if {baseline}:
    import ctr.train.runner
import ctr.train.launch as launch
launch.spawn = lambda args, recipe: print(time.perf_counter() - start, len(sys.modules)) or 0
from ctr.cli import main
sys.exit(main(["train", {recipe!r}, "--out", {out!r}, "-o", "trainer.devices=2"]))
"""

RANK = """\
import os, sys, time
start = time.perf_counter()
os.environ.update(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0")
if {baseline}:
    import ctr.train.runner
import ctr.train.distributed as distributed
distributed.train_in_group = lambda *args: print(time.perf_counter() - start, len(sys.modules)) or os._exit(0)
from ctr.cli import main
sys.exit(main(["train", {recipe!r}, "--out", {out!r}, "-o", "trainer.devices=2"]))
"""


def sample(script: str, recipe: str, baseline: bool) -> tuple[float, int]:
    """Seconds from the interpreter's first line to the stubbed call, and modules loaded."""
    with tempfile.TemporaryDirectory() as out:
        code = script.format(baseline=baseline, recipe=recipe, out=f"{out}/run")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, modules = done.stdout.split()
    return float(seconds), int(modules)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--rank", action="store_true", help="time a rank to its training's start, not the launcher")
    args = parser.parse_args()
    script, what = (RANK, "its training's start") if args.rank else (LAUNCHER, "its ranks' start")
    runs: dict[bool, list[tuple[float, int]]] = {False: [], True: []}
    for _ in range(args.samples):
        for baseline in (True, False):
            runs[baseline].append(sample(script, args.recipe, baseline))
    median = {kind: statistics.median(s for s, _ in runs[kind]) for kind in runs}
    for kind, name in ((False, "ctr's " + ("rank" if args.rank else "launcher")), (True, "loop imported first")):
        print(f"{name:20s} {median[kind]:6.2f} s to {what} (median of {args.samples}), "
              f"{runs[kind][-1][1]:,} modules")
    print(f"ratio {median[True] / median[False]:.2f}x sooner")


if __name__ == "__main__":
    main()
