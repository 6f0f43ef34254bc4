"""One rank of a distributed run (started with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set)
that also saves its copy of the method's synced buffers once training ends, before the best
checkpoint is loaded back: ``python -m tests.train.replica_rank RECIPE RUN_DIR OUT_DIR``
writes OUT_DIR/rank-<rank>.pt (test_distributed compares the ranks' copies)."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ctr.recipe import load_recipe
from ctr.train import distributed
from ctr.train.runner import train


def main(recipe: str, run: str, out: str) -> None:
    epochs = distributed._epochs

    def saving(recipe, par, *args):  # noqa: ANN001, ANN202
        state = epochs(recipe, par, *args)
        copy = {name: getattr(par.embedding, name).clone() for name in par.embedding.synced_buffers}
        torch.save(copy, Path(out) / f"rank-{dist.get_rank()}.pt")
        return state

    distributed._epochs = saving
    train(load_recipe(Path(recipe)), Path(run))


if __name__ == "__main__":
    main(*sys.argv[1:])
