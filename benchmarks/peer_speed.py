"""Training speed of DeepFM [400, 400, 400], dim 16, batch 4096 on synthetic Criteo-schema
rows, in one run:

(a) ``realistic``: 10M embedding rows in all (Criteo-like vocabularies scaled up, Zipf ids):
    ctr's samples/s against DeepCTR-Torch 0.3.0's on the same rows and settings;
(b) ``small``: at most 100k rows in all: ctr's samples/s against its own MLP trained alone
    on the same batches (the model's compute floor on this CPU).

    flock /tmp/ctr-heavy.lock benchmarks/.venv-peer/bin/python -m benchmarks.peer_speed --threads 2

Rows come from ctr's synthetic generator (``PlantedModel``); the vocabularies are the
generator's full id spaces (every id has a table row, seen or not), ids are encoded as
ctr's codes (raw + 2), numeric values log1p-transformed. ctr's step is exactly its
training step (embedding method → model → BCE → backward → Adam on dense parameters and
the embedding optimizer on the touched rows). Batch assembly (ctr's ``BatchBuilder`` gathering the
batch's rows from memory: the data loader's work, which ``ctr train`` does in a prefetch
thread) is timed apart and in neither side's figure, as the MLP alone is handed its batch's
input built; DeepCTR-Torch's is its ``fit`` on the same arrays with Adam on dense parameters and
Adagrad on its (dense-gradient) tables.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.columns import Columns, packed_rows
from ctr.datasets.synthetic import CRITEO_LIKE_VOCABS, NUM_CATEGORICAL, NUM_NUMERIC, PlantedModel, SyntheticConfig
from ctr.recipe import recipe_from_dict
from ctr.schema import FeatureInfo, FeatureSpec, Schema
from ctr.train.optim import build_optimizer
from ctr.train.task import CTRTask
from benchmarks.peer_common import Timer, deepctr_columns, deepctr_inputs, split_optimizer

log = logging.getLogger("peer_speed")
SCENARIOS = {"realistic": 10_000_000, "small": 100_000}


def synthetic_rows(total_rows: int, rows: int, seed: int) -> tuple[Schema, Columns]:
    """``rows`` synthetic rows whose 26 vocabularies hold ``total_rows`` ids in all."""
    scale = total_rows / sum(CRITEO_LIKE_VOCABS)
    config = SyntheticConfig(rows=rows, vocab_scale=scale, seed=seed)
    model = PlantedModel(config)
    ids, counts, labels = model.sample(np.random.default_rng([seed, 1]), rows)
    dense = np.nan_to_num(np.log1p(counts), nan=0.0).astype(np.float32)
    numeric = [FeatureInfo(FeatureSpec(name=f"I{j + 1}", kind="numeric")) for j in range(NUM_NUMERIC)]
    categorical = [
        FeatureInfo(FeatureSpec(name=f"C{j + 1}"), vocab_size=v + 2, table=f"C{j + 1}") for j, v in enumerate(model.vocabs)
    ]
    schema = Schema(features=numeric + categorical, label="label")
    cols = Columns(labels.astype(np.float32), None, dense, (ids + 2).astype(np.int32), {})
    return schema, cols


def ctr_task(schema: Schema, args: argparse.Namespace) -> CTRTask:
    raw = {
        "model": {"name": "deepfm", "hidden": [400, 400, 400], "dropout": 0.0},
        "embedding": {"method": "full", "dim": 16, "init_std": 0.01},
        "train": {"batch_size": args.batch_size, "optimizer": {"name": "adam", "lr": 0.001},
                  "embedding_optimizer": {"name": args.embedding_optimizer, "lr": 0.05, "fused": args.fused}},
    }
    return CTRTask(recipe_from_dict(raw), schema)


def ctr_and_mlp(schema: Schema, cols: Columns, args: argparse.Namespace, steps: int) -> dict[str, float]:
    """samples/s of ctr's training step and of the DeepFM's MLP trained alone on the same
    batches, interleaved batch by batch (all see the same machine load), plus the batch
    assembly's (timed apart). The MLP alone runs twice: with the gradient of its input (which
    training the embeddings needs, so the model's compute floor) and without it."""
    torch.manual_seed(0)
    task = ctr_task(schema, args)
    optimizer = task.configure_optimizers()
    alone = {}
    for variant in ("with_input_grad", "no_input_grad"):
        mlp = ctr_task(schema, args).net.model.dnn
        mlp.load_state_dict(task.net.model.dnn.state_dict())
        alone[variant] = (mlp, build_optimizer(task.recipe.train.optimizer, list(mlp.parameters()), "train.optimizer"))
    (rows, builder), order = packed_rows(cols, schema), np.random.default_rng(0).permutation(cols.rows)
    timers, b = {name: Timer() for name in ("assembly", "ctr", *alone)}, args.batch_size
    for step in range(steps + args.warmup):
        start = (step * b) % (cols.rows - b + 1)
        index = order[start : start + b]
        timing = step >= args.warmup
        with timers["assembly"] if timing else contextlib.nullcontext():
            batch = builder.build(rows.take(index))
        with timers["ctr"] if timing else contextlib.nullcontext():
            task.step(batch, optimizer)
        with torch.no_grad():  # the MLP's input for this batch, computed outside its timing
            model = task.net.model
            fields = torch.cat([task.net.embedding(batch.sparse).pooled, model.numeric(batch.dense)], 1).flatten(1)
        for variant, (mlp, mlp_opt) in alone.items():
            x = fields.clone().requires_grad_(variant == "with_input_grad")
            with timers[variant] if timing else contextlib.nullcontext():
                mlp_loss = F.binary_cross_entropy_with_logits(mlp(x).squeeze(-1), batch.labels)
                mlp_opt.zero_grad()
                mlp_loss.backward()
                mlp_opt.step()
    return {name: steps * b / timer.seconds for name, timer in timers.items()}


def deepctr_speed(schema: Schema, cols: Columns, args: argparse.Namespace, steps: int) -> float:
    """samples/s of DeepCTR-Torch's DeepFM ``fit`` over ``steps`` batches of the same rows."""
    from deepctr_torch.models import DeepFM

    torch.manual_seed(0)
    feature_columns = deepctr_columns(schema, 16, 0.01)
    model = DeepFM(feature_columns, feature_columns, dnn_hidden_units=(400, 400, 400), dnn_dropout=0.0,
                   l2_reg_embedding=0.0, l2_reg_linear=0.0, init_std=0.01, device="cpu")
    model.compile(split_optimizer(model, 0.001, 0.05), "binary_crossentropy")
    rows = steps * args.batch_size
    sub = Columns(cols.labels[:rows], None, cols.dense[:rows], cols.categorical[:rows], {})
    inputs = deepctr_inputs(schema, sub)
    warm = Columns(cols.labels[-args.batch_size * args.warmup:], None, cols.dense[-args.batch_size * args.warmup:],
                   cols.categorical[-args.batch_size * args.warmup:], {})
    with contextlib.redirect_stdout(io.StringIO()):
        model.fit(deepctr_inputs(schema, warm), warm.labels, batch_size=args.batch_size, epochs=1, verbose=0)
        with Timer() as timer:
            model.fit(inputs, sub.labels, batch_size=args.batch_size, epochs=1, verbose=0)
    return rows / timer.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=0, help="timed ctr steps (0 = one pass over --rows)")
    parser.add_argument("--peer-steps", type=int, default=24, help="timed DeepCTR-Torch steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--embedding-optimizer", default="adagrad")
    parser.add_argument("--fused", action="store_true", help="update the table inside the lookup's backward")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    steps = args.steps or args.rows // args.batch_size - args.warmup
    print(f"DeepFM [400,400,400], dim 16, batch {args.batch_size}, {args.rows} rows, threads {args.threads}, "
          f"embedding optimizer {args.embedding_optimizer}{' (fused)' if args.fused else ''}")
    for scenario in args.scenarios:
        schema, cols = synthetic_rows(SCENARIOS[scenario], args.rows, seed=2024)
        table_rows = sum(schema.tables().values())
        speed = ctr_and_mlp(schema, cols, args, steps)
        ctr_speed, floor, no_grad = speed["ctr"], speed["with_input_grad"], speed["no_input_grad"]
        line = (f"{scenario}: {table_rows} table rows | ctr {ctr_speed:.0f} samples/s | MLP alone {floor:.0f} "
                f"samples/s (with input gradient), {no_grad:.0f} (without) | ctr / MLP alone = "
                f"{ctr_speed / floor:.3f} (with input gradient), {ctr_speed / no_grad:.3f} (without) | "
                f"batch assembly {1e3 * args.batch_size / speed['assembly']:.1f} ms/batch (in neither timing)")
        if scenario == "realistic":
            peer = deepctr_speed(schema, cols, args, args.peer_steps)
            line += f" | DeepCTR-Torch {peer:.0f} samples/s | ctr / DeepCTR-Torch = {ctr_speed / peer:.2f}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
