"""How soon ``ctr train`` on several processes starts its ranks, against a launcher that
imports the training loop first (what it did before it kept to the recipe and the checks).

Each sample is a fresh interpreter that runs ``ctr train RECIPE -o trainer.devices=2`` up to
the point where it would start its ranks (``launch.spawn`` stubbed: none is started), once as
ctr does it and once with ``ctr.train.runner`` (Lightning, torch._dynamo, the loop) imported
first; the two kinds alternate, so a shared, noisy machine slows both alike. Run it alone:

    .venv/bin/python -m benchmarks.launcher_start --samples 5

Prints the median seconds of each, their ratio, and the modules each had loaded.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile

STUBBED = """\
import sys, time
start = time.perf_counter()
if {baseline}:
    import ctr.train.runner
import ctr.train.launch as launch
launch.spawn = lambda args, recipe: print(time.perf_counter() - start, len(sys.modules)) or 0
from ctr.cli import main
sys.exit(main(["train", {recipe!r}, "--out", {out!r}, "-o", "trainer.devices=2"]))
"""


def sample(recipe: str, baseline: bool) -> tuple[float, int]:
    """Seconds from the interpreter's first line to the stubbed spawn, and modules loaded."""
    with tempfile.TemporaryDirectory() as out:
        script = STUBBED.format(baseline=baseline, recipe=recipe, out=f"{out}/run")
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    seconds, modules = done.stdout.split()
    return float(seconds), int(modules)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    runs: dict[bool, list[tuple[float, int]]] = {False: [], True: []}
    for _ in range(args.samples):
        for baseline in (True, False):
            runs[baseline].append(sample(args.recipe, baseline))
    median = {kind: statistics.median(s for s, _ in runs[kind]) for kind in runs}
    for kind, name in ((False, "ctr's launcher"), (True, "loop imported first")):
        print(f"{name:20s} {median[kind]:6.2f} s to its ranks' start (median of {args.samples}), "
              f"{runs[kind][-1][1]:,} modules")
    print(f"ratio {median[True] / median[False]:.2f}x sooner")


if __name__ == "__main__":
    main()
