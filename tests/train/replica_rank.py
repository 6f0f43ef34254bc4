"""One rank of a distributed run (started with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set)
that also saves its copy of the method's synced buffers once training ends, before the best
checkpoint is loaded back: ``python -m tests.train.replica_rank RECIPE RUN_DIR OUT_DIR``
writes OUT_DIR/rank-<rank>.pt (test_distributed compares the ranks' copies)."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ctr.recipe import load_recipe
from ctr.train.distributed_epochs import EpochLoop
from ctr.train.runner import train


def main(recipe: str, run: str, out: str) -> None:
    run_epochs = EpochLoop.run

    def saving(loop, state):  # noqa: ANN001, ANN202
        state = run_epochs(loop, state)
        embedding = loop.par.embedding
        copy = {name: getattr(embedding, name).clone() for name in embedding.synced_buffers}
        torch.save(copy, Path(out) / f"rank-{dist.get_rank()}.pt")
        return state

    EpochLoop.run = saving
    train(load_recipe(Path(recipe)), Path(run))


if __name__ == "__main__":
    main(*sys.argv[1:])
