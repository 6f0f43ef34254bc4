"""Trains recipes over several seeds with ``ctr train`` and prints each test metric as
mean ± sd, one row per recipe (finished run directories are reused).

    flock /tmp/ctr-heavy.lock .venv/bin/python -m benchmarks.seeds \\
        recipes/movielens/autoint.yaml recipes/movielens/autoint_plus.yaml --seeds 1 2 3 --out runs/seeds
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

import torch

from ctr.metrics import metrics_from_json
from ctr.recipe import load_recipe
from ctr.train.runner import train
from benchmarks.peer_common import Result, summary_table, write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY.PATH=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    results = []
    for path in args.recipes:
        recipe = load_recipe(path, args.override + [f"trainer.num_threads={args.threads}", "trainer.progress_bar=false"])
        for seed in args.seeds:
            run = args.out / recipe.name / f"seed{seed}"
            done = run / "metrics.json"
            metrics = metrics_from_json(done.read_text()) if done.exists() else train(replace(recipe, seed=seed), run)
            results.append(Result(recipe.name, seed, metrics["test"], metrics["train_samples_per_s"]))
    keys = tuple(k for k in ("auc", "gauc", "logloss") if any(k in result.test for result in results))
    table = summary_table(results, keys)
    print(f"seeds {args.seeds}, threads {args.threads}, overrides {args.override}")
    print(table)
    write_json(args.out / "results.json", {"recipes": args.recipes, "table": table, "results": [vars(r) for r in results]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
