"""Replicated methods (embeddings/replicas.py): writes outside the optimizer, recorded and synced."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ctr.embeddings.alpt import ALPTConfig, ALPTEmbedding
from ctr.embeddings.dpq import DPQConfig, DPQEmbedding
from ctr.embeddings.mgqe import MGQEConfig, MGQEmbedding
from ctr.embeddings.quantize import Int16Config, QuantizeConfig, QuantizedEmbedding
from ctr.embeddings.replicas import last_occurrences
from tests.embeddings.schemas import batch, schema

BIG = {"item": 2000, "user": 1000, "tags": 100}
METHODS = {
    "int8": lambda: QuantizedEmbedding(schema(BIG), QuantizeConfig(dim=8, lr=0.3)),
    "int16": lambda: QuantizedEmbedding(schema(BIG), Int16Config(dim=8, lr=0.3)),
    "alpt": lambda: ALPTEmbedding(schema(BIG), ALPTConfig(dim=8, lr=0.3, scale_lr=0.1)),
    "dpq": lambda: DPQEmbedding(schema(BIG), DPQConfig(dim=8, budget=0.5)),
    "mgqe": lambda: MGQEmbedding(schema(BIG), MGQEConfig(dim=8, budget=0.5)),
}


def built(name: str, replicated: bool):
    torch.manual_seed(0)
    method = METHODS[name]()
    method.replicated = replicated
    return method.train()


def step(method) -> None:
    """A training lookup (rows repeated) and its backward, whose random draws start at seed 1."""
    ids = torch.tensor([5, 9, 9, 30, 400, 9, 77, 5])
    out = method.embed_ids(torch.zeros_like(ids), ids)
    loss = out.square().sum() + method.regularizer()
    torch.manual_seed(1)
    loss.backward()


def stored(method) -> dict[str, torch.Tensor]:
    return {name: getattr(method, name).clone() for name in method.synced_buffers}


@pytest.fixture
def group_of_one(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_last_occurrences_keep_the_last_write_of_each_row():
    assert last_occurrences(torch.tensor([3, 1, 3, 2, 1])).tolist() == [4, 3, 2]
    assert last_occurrences(torch.zeros(0, dtype=torch.int64)).tolist() == []


@pytest.mark.parametrize("name", METHODS)
def test_sync_replicas_is_a_no_op_when_not_replicated(name):
    method = built(name, replicated=False)
    before = stored(method)
    step(method)
    written = stored(method)
    assert any(not torch.equal(before[k], written[k]) for k in before)  # written in the step, as one process does
    method.sync_replicas()  # no process group: it would fail if it called a collective
    assert all(torch.equal(written[k], v) for k, v in stored(method).items())


@pytest.mark.parametrize("name", METHODS)
def test_a_replicated_copy_alone_ends_bitwise_as_the_unreplicated_one(name, group_of_one):
    alone, replicated = built(name, replicated=False), built(name, replicated=True)
    before = stored(replicated)
    step(alone)
    step(replicated)
    assert all(torch.equal(before[k], v) for k, v in stored(replicated).items())  # only recorded so far
    torch.manual_seed(1)  # the noise the backward of the one alone rounded with
    replicated.sync_replicas()
    expected = stored(alone)
    assert all(torch.equal(expected[k], v) for k, v in stored(replicated).items())


def synced_copies(rank: int, store: str, out: str) -> None:
    """Rank ``rank`` of 2: each method trains a step on rows of its own (rank 1 on none for
    int8 and dpq) with noise of its own, syncs, and saves its copy to ``out``/<method>-<rank>.pt."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    for name in METHODS:
        method = built(name, replicated=True)
        torch.manual_seed(10 + rank)
        ids = torch.tensor([5, 9, 9, 30] if rank == 0 else [9, 77, 400])
        if rank == 0 or name not in ("int8", "dpq"):
            out_rows = method.embed_ids(torch.zeros_like(ids), ids)
            (out_rows.square().sum() + method.regularizer()).backward()
        method.sync_replicas()
        torch.save(stored(method), f"{out}/{name}-{rank}.pt")
    dist.destroy_process_group()


def test_two_replicas_end_bitwise_equal_after_a_step_on_different_rows_and_noise(tmp_path):
    mp.spawn(synced_copies, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    for name in METHODS:
        first, second = (torch.load(tmp_path / f"{name}-{rank}.pt") for rank in range(2))
        initial = stored(built(name, replicated=False))
        assert all(torch.equal(first[k], second[k]) for k in first), name
        changed = {k for k in first if not torch.equal(first[k], initial[k])}
        assert changed == set(initial), name


def alpt_scale_of_parts(rank: int, store: str, out: str) -> None:
    """Rank ``rank`` of 2 trains ``alpt`` on its part of an 8-row batch (3 rows, 5 rows), its
    loss scaled as a distributed step's (× world / 8), syncs, and saves its gradient scale."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    method = built("alpt", replicated=True)
    part = batch(size=3 if rank == 0 else 5, seed=rank)
    (method(part).pooled.sum() * 2 / 8).backward()
    method.sync_replicas()
    torch.save(method.step_gradient_scale(), f"{out}/alpt-scale-{rank}.pt")
    dist.destroy_process_group()


def test_replicated_alpt_scales_the_steps_gradient_by_the_whole_batch(tmp_path):
    """Each rank's forward sees its part of the batch; rank 0 updates the steps with the
    whole batch's mean gradient, so LSQ's B is every part's rows (8), not rank 0's (3)."""
    mp.spawn(alpt_scale_of_parts, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    for rank in range(2):
        assert torch.load(tmp_path / f"alpt-scale-{rank}.pt") == pytest.approx(1 / math.sqrt(8 * 8 * 127), rel=1e-12)
