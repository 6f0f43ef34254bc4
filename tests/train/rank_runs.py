"""One rank of several distributed ``ctr`` commands run in turn in this one process, each in a
process group of its own (started with RANK, LOCAL_RANK, WORLD_SIZE and MASTER_ADDR set):
``python -m tests.train.rank_runs PLAN``, where the JSON file PLAN lists the runs as
``{"args": [ctr's arguments], "port": MASTER_PORT, "replicas": OUT_DIR or null}``. The
imports of torch and TorchRec, seconds a rank, are paid once for every run (test_distributed
launches several runs at once). With ``replicas`` the rank also saves its copy of the
method's synced buffers once training ends, before the best checkpoint is loaded back:
OUT_DIR/rank-<rank>.pt (test_distributed compares the ranks' copies). Exits with the first
command's failing code, or 0."""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ctr.cli import main
from ctr.train.distributed_epochs import EpochLoop

RUN_EPOCHS = EpochLoop.run


def saving_replicas(out: Path):  # noqa: ANN201 (an EpochLoop.run)
    """``EpochLoop.run`` that then saves this rank's synced buffers to ``out``/rank-<rank>.pt."""
    def run(loop, state):  # noqa: ANN001, ANN202
        state = RUN_EPOCHS(loop, state)
        embedding = loop.par.embedding
        copy = {name: getattr(embedding, name).clone() for name in embedding.synced_buffers}
        torch.save(copy, out / f"rank-{dist.get_rank()}.pt")
        return state

    return run


def run_all(plan: list[dict]) -> int:
    """Runs every command of ``plan`` in turn: 0, or the first failing one's exit code."""
    for run in plan:
        os.environ["MASTER_PORT"] = str(run["port"])
        EpochLoop.run = saving_replicas(Path(run["replicas"])) if run["replicas"] else RUN_EPOCHS
        code = main(run["args"])
        if code:
            return code
    return 0


if __name__ == "__main__":
    code = run_all(json.loads(Path(sys.argv[1]).read_text()))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as ctr's ranks end: gloo's threads outlive the process groups
