"""Sparse table gradients the training loops build themselves (a rank's average, weight
decay) choose torch's sparse invariant checks, which torch otherwise warns about once a
process: a distributed rank, which imports no Lightning, had no filter for that warning."""

import json
import subprocess
import sys

import pytest

SCRIPT = """
import json, tempfile, warnings
import torch, torch.distributed as dist
from ctr.train.distributed_epochs import average_sparse_gradients
from ctr.train.optim import decay_gradients

warnings.simplefilter("always")
with tempfile.TemporaryDirectory() as folder:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=0, world_size=1)
    table, untouched = torch.nn.Parameter(torch.ones(5, 2)), torch.nn.Parameter(torch.ones(5, 2))
    table.grad = torch.sparse_coo_tensor(torch.tensor([[1, 3]]), torch.full((2, 2), 0.5), (5, 2),
                                         check_invariants=False)
    average_sparse_gradients([table, untouched], world=1)
    decay_gradients([table], weight_decay=0.1)
    dist.destroy_process_group()
print(json.dumps([table.grad.to_dense().tolist(), untouched.grad.to_dense().abs().sum().item()]))
"""


def test_sparse_gradients_are_averaged_and_decayed_without_torch_s_warning():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Sparse invariant" not in done.stderr, done.stderr[-2000:]
    averaged, untouched = json.loads(done.stdout)
    assert sum(averaged, []) == pytest.approx([0, 0, 0.6, 0.6, 0, 0, 0.6, 0.6, 0, 0]) and untouched == 0
