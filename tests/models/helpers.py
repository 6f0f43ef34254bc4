"""Small helpers for model tests: build a model over a prepared dataset and train it briefly."""

from __future__ import annotations

import numpy as np
import torch

from ctr.batch import Batch, JaggedFeatures
from ctr.datasets import BatchLoader, Prepared
from ctr.metrics import auc, group_auc
from ctr.recipe import recipe_from_dict
from ctr.schema import FeatureInfo, FeatureSpec, Schema
from ctr.train.task import CTRTask


def make_task(prepared: Prepared, model: dict, embedding: dict | None = None, train: dict | None = None, seed: int = 0) -> CTRTask:
    """A CTRTask (embedding + model + optimizers) for ``prepared`` with the given recipe blocks."""
    torch.manual_seed(seed)
    raw = {"model": model, "embedding": {"method": "full", "dim": 8, "init_std": 0.1, **(embedding or {})},
           "train": {"batch_size": 256, "optimizer": {"name": "adam", "lr": 0.003},
                     "embedding_optimizer": {"name": "adagrad", "lr": 0.05}, **(train or {})}}
    return CTRTask(recipe_from_dict(raw), prepared.schema)


def fit(task: CTRTask, prepared: Prepared, epochs: int = 2) -> dict[str, float]:
    """Trains ``task`` with a plain loop (no Lightning) and returns its test metrics."""
    optimizer = task.configure_optimizers()
    loader = BatchLoader(prepared.split_dir("train"), prepared.schema, task.recipe.train.batch_size,
                         shuffle=True, seed=0, prefetch=0)
    task.train()
    for _ in range(epochs):
        for batch in loader:
            task.step(batch, optimizer)
    return evaluate(task, prepared, "test")


def first_batch(prepared: Prepared, split: str = "train", size: int = 64):
    """The first ``size`` rows of ``split`` as one Batch."""
    return next(iter(BatchLoader(prepared.split_dir(split), prepared.schema, size, prefetch=0)))


@torch.no_grad()
def evaluate(task: CTRTask, prepared: Prepared, split: str) -> dict[str, float]:
    task.eval()
    loader = BatchLoader(prepared.split_dir(split), prepared.schema, 4096, prefetch=0)
    logits, labels, groups = [], [], []
    for batch in loader:
        logits.append(task(batch).double().numpy())  # ranked by logits, as every evaluation ranks
        labels.append(batch.labels.numpy())
        if batch.groups is not None:
            groups.append(batch.groups.numpy())
    z, y = np.concatenate(logits), np.concatenate(labels)
    out = {"auc": auc(y, z)}
    if groups:
        out["gauc"] = group_auc(np.concatenate(groups), y, z)
    return out


def planted_schema(fields: int, vocab: int, dense: int = 0) -> Schema:
    """A schema of ``fields`` categorical features with ``vocab`` ids each (plus pad and OOV)."""
    features = [FeatureInfo(FeatureSpec(name=f"c{i}"), vocab_size=vocab + 2, table=f"c{i}") for i in range(fields)]
    features += [FeatureInfo(FeatureSpec(name=f"x{i}", kind="numeric")) for i in range(dense)]
    counts = {f"c{i}": np.ones(vocab + 2, dtype=np.int64) for i in range(fields)}
    return Schema(features=features, label="label", counts=counts)


def planted_batches(schema: Schema, logit_fn, rows: int, batch_size: int, seed: int) -> list[Batch]:
    """Batches with uniform random ids and labels drawn from sigmoid(logit_fn(ids, dense))."""
    gen = torch.Generator().manual_seed(seed)
    sparse = [f for f in schema.sparse_features]
    ids = torch.stack([torch.randint(2, f.vocab_size, (rows,), generator=gen) for f in sparse], 1)
    dense = torch.randn(rows, len(schema.dense_features), generator=gen)
    labels = torch.bernoulli(torch.sigmoid(logit_fn(ids, dense)), generator=gen)
    keys = [f.spec.name for f in sparse]
    return [
        Batch(dense[s : s + batch_size], JaggedFeatures.from_dense(keys, ids[s : s + batch_size]), labels[s : s + batch_size])
        for s in range(0, rows, batch_size)
    ]


def fit_batches(task: CTRTask, train: list[Batch], test: list[Batch], epochs: int) -> float:
    """Trains on in-memory batches with a plain loop; returns the test AUC."""
    optimizer = task.configure_optimizers()
    task.train()
    for _ in range(epochs):
        for batch in train:
            task.step(batch, optimizer)
    task.eval()
    with torch.no_grad():
        logits = torch.cat([task(b).double() for b in test]).numpy()
    return auc(torch.cat([b.labels for b in test]).numpy(), logits)


def task_for_schema(schema: Schema, model: dict, seed: int = 0, **blocks) -> CTRTask:
    """A CTRTask over an in-memory schema (no prepared dataset)."""
    torch.manual_seed(seed)
    raw = {"model": model, "embedding": {"method": "full", "dim": 8, "init_std": 0.1, **blocks.get("embedding", {})},
           "train": {"optimizer": {"name": "adam", "lr": 0.003},
                     "embedding_optimizer": {"name": "adagrad", "lr": 0.05}, **blocks.get("train", {})}}
    return CTRTask(recipe_from_dict(raw), schema)


def behaviour_schema(items: int, max_len: int) -> Schema:
    """A DIN-style schema: candidate ``item_id`` and its history ``hist_item_id`` (one table)."""
    item = FeatureInfo(FeatureSpec(name="item_id"), vocab_size=items + 2, table="item_id")
    hist = FeatureInfo(FeatureSpec(name="hist_item_id", kind="sequence", share_with="item_id", max_len=max_len,
                                   pooling="none"), vocab_size=items + 2, table="item_id")
    counts = np.arange(items + 2, dtype=np.int64) % 7 + 1
    return Schema(features=[item, hist], label="label", counts={"item_id": counts})


def behaviour_batches(schema: Schema, rows: int, batch_size: int, seed: int) -> list[Batch]:
    """Label 1 with probability 0.9 when the candidate is in the history, else 0.1."""
    gen = torch.Generator().manual_seed(seed)
    items, max_len = schema.feature("item_id").vocab_size, schema.feature("hist_item_id").spec.max_len
    out = []
    for _ in range(0, rows, batch_size):
        lengths = torch.randint(1, max_len + 1, (batch_size,), generator=gen)
        hist = torch.randint(2, items, (int(lengths.sum()),), generator=gen)
        owner = torch.repeat_interleave(torch.arange(batch_size), lengths)
        in_hist = torch.rand(batch_size, generator=gen) < 0.5
        pick = torch.cumsum(lengths, 0) - 1  # the last behaviour of each sample
        cand = torch.where(in_hist, hist[pick], torch.randint(2, items, (batch_size,), generator=gen))
        hit = torch.zeros(batch_size).index_add_(0, owner, (hist == cand[owner]).float()) > 0
        labels = torch.bernoulli(torch.where(hit, 0.9, 0.1), generator=gen)
        sparse = JaggedFeatures.from_lengths(["item_id", "hist_item_id"], torch.cat([cand, hist]),
                                             torch.cat([torch.ones(batch_size, dtype=torch.int64), lengths]))
        out.append(Batch(torch.zeros(batch_size, 0), sparse, labels))
    return out
