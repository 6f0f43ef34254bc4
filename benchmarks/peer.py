"""Peer benchmark: the same model on the same files with the same settings, in ctr and in
DeepCTR-Torch 0.3.0, in one run; prints test AUC, logloss (group AUC when the data has
groups) and train samples/s for both, per seed and as mean ± sd.

Setup once: ``bash benchmarks/setup_peer.sh`` (its own virtualenv, torch==2.13.0 CPU).

    flock /tmp/ctr-heavy.lock benchmarks/.venv-peer/bin/python -m benchmarks.peer \\
        recipes/amazon_beauty/din.yaml --seeds 1 2 3 --out runs/peer/din

Both sides: the recipe's prepared (encoded) shards; its embedding dim and init std; its
MLP widths and activations; Adam on dense parameters and Adagrad (the recipe's learning
rates) on the tables; its batch size, epochs and early stopping on valid AUC with the best
epoch's weights tested. Models: din, autoint, autoint_plus, deepfm, wdl, dcn.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ctr.datasets import prepare
from benchmarks.columns import read_columns
from ctr.datasets.shards import shard_files
from ctr.metrics import metrics_from_json, split_metrics
from ctr.recipe import Recipe, load_recipe
from ctr.train.runner import train
from benchmarks.peer_common import Result, Timer, deepctr_columns, deepctr_inputs, split_optimizer, summary_table, write_json

log = logging.getLogger("peer")


def peer_model(recipe: Recipe, schema, seed: int):
    """The DeepCTR-Torch model matching ``recipe.model`` (its settings mapped one to one)."""
    from deepctr_torch import models

    cfg, dim, std = recipe.model, recipe.embedding.dim, recipe.embedding.init_std
    cols = deepctr_columns(schema, dim, std)
    common = dict(l2_reg_embedding=0.0, init_std=std, seed=seed, device="cpu")
    name = cfg.name
    if name == "din":
        if cfg.l2_reg or cfg.attention_scale or cfg.variant != "paper" or cfg.unit_input != "authors":
            raise SystemExit("peer: DeepCTR-Torch's DIN is the paper's top input with the authors' activation-unit "
                             "input [q, k, q - k, q * k] and no mini-batch aware L2; compare with -o model.l2_reg=0 "
                             "-o model.variant=paper -o model.attention_input=authors")
        if cfg.activation == "dice":
            raise SystemExit("peer: DeepCTR-Torch 0.3.0's DIN fails with a Dice top MLP (its DNN builds a 3-d Dice "
                             "for 2-d inputs); compare with -o model.activation=prelu")
        targets = _din_targets(recipe, schema)
        att_act = "Dice" if cfg.attention_activation == "dice" else cfg.attention_activation
        return models.DIN(cols, targets, dnn_hidden_units=tuple(cfg.hidden), dnn_activation=cfg.activation,
                          att_hidden_size=tuple(cfg.attention_hidden), att_activation=att_act,
                          att_weight_normalization=cfg.normalise, dnn_dropout=cfg.dropout, **common)
    if name in ("autoint", "autoint_plus"):
        if cfg.heads * cfg.head_dim != dim or cfg.scale:
            raise SystemExit("peer: DeepCTR-Torch's AutoInt uses heads × head_dim = embedding dim and unscaled "
                             f"scores; set model.head_dim={dim // cfg.heads} model.scale=false")
        if cfg.projection_relu or cfg.layer_norm or cfg.embedding_dropout:
            raise SystemExit("peer: DeepCTR-Torch's AutoInt has none of the authors' options; set "
                             "model.projection_relu=false model.layer_norm=false model.embedding_dropout=0")
        hidden = tuple(cfg.hidden) if name == "autoint_plus" else ()
        return models.AutoInt([], cols, att_layer_num=cfg.layers, att_head_num=cfg.heads, att_res=cfg.residual,
                              dnn_hidden_units=hidden, dnn_dropout=getattr(cfg, "dropout", 0.0), **common)
    if name == "deepfm":
        return models.DeepFM(cols, cols, dnn_hidden_units=tuple(cfg.hidden), dnn_dropout=cfg.dropout,
                             l2_reg_linear=0.0, **common)
    if name == "wdl":
        return models.WDL(cols, cols, dnn_hidden_units=tuple(cfg.hidden), dnn_dropout=cfg.dropout,
                          l2_reg_linear=0.0, **common)
    if name == "dcn":
        return models.DCN(cols, cols, cross_num=cfg.cross_layers, dnn_hidden_units=tuple(cfg.hidden),
                          dnn_dropout=cfg.dropout, dnn_use_bn=cfg.batch_norm, l2_reg_linear=0.0, **common)
    raise SystemExit(f"peer: no DeepCTR-Torch counterpart for model {name!r}")


def _din_targets(recipe: Recipe, schema) -> list[str]:
    seqs = [f.spec.name for f in schema.sequence_features]
    targets = recipe.model.target_fields or [schema.feature(s).spec.share_with for s in seqs]
    behaviours = recipe.model.sequence_fields or seqs
    if [f"hist_{t}" for t in targets] != list(behaviours):
        raise SystemExit("peer: DeepCTR-Torch's DIN needs each behaviour named hist_<target>")
    return targets


def run_peer(recipe: Recipe, seed: int) -> Result:
    """Trains the DeepCTR-Torch counterpart with ctr's early stopping; tests the best epoch.
    It reads the files ``ctr train`` reads (the split is seeded by ``data.split.seed``)."""
    torch.manual_seed(seed)
    prepared = prepare(recipe.data, progress=False)
    schema, train_cfg = prepared.schema, recipe.train
    data = {s: read_columns(shard_files(prepared.split_dir(s)), schema) for s in ("train", "valid", "test")}
    inputs = {s: deepctr_inputs(schema, c) for s, c in data.items()}
    model = peer_model(recipe, schema, seed)
    model.compile(split_optimizer(model, train_cfg.optimizer.lr, train_cfg.embedding_optimizer.lr), "binary_crossentropy")
    timer, best, best_auc, waited, epochs = Timer(), None, -1.0, 0, 0
    patience = train_cfg.early_stop.patience if train_cfg.early_stop else train_cfg.epochs
    for _ in range(train_cfg.epochs):
        with timer, contextlib.redirect_stdout(io.StringIO()):
            model.fit(inputs["train"], data["train"].labels, batch_size=train_cfg.batch_size, epochs=1, verbose=0)
        epochs += 1
        valid = _scores(model, inputs["valid"], data["valid"], train_cfg.eval_batch_size)
        if valid["auc"] > best_auc:
            best, best_auc, waited = copy.deepcopy(model.state_dict()), valid["auc"], 0
        else:
            waited += 1
            if waited >= patience:
                break
    model.load_state_dict(best)
    test = _scores(model, inputs["test"], data["test"], train_cfg.eval_batch_size)
    speed = data["train"].rows * epochs / timer.seconds
    return Result("deepctr-torch", seed, test, speed, {"epochs": epochs})


def _scores(model, inputs: dict, cols, batch_size: int) -> dict[str, float]:
    """The peer's metrics as ctr computes its own: DeepCTR-Torch predicts probabilities [N],
    taken back to logits (0 and 1 to -inf and inf: the same ranking, and logloss clips them as
    it clips probabilities) for ``split_metrics``, which reads logits."""
    probs = model.predict(inputs, batch_size=batch_size).reshape(-1).astype(np.float64)
    with np.errstate(divide="ignore"):
        return split_metrics(cols.labels, np.log(probs) - np.log1p(-probs), cols.groups)


def run_ctr(recipe: Recipe, out: Path, seed: int) -> Result:
    """``ctr train`` of the recipe with this seed (a finished run directory is reused)."""
    run = out / f"ctr-seed{seed}"
    metrics_file = run / "metrics.json"
    if metrics_file.exists():
        metrics = metrics_from_json(metrics_file.read_text())
    else:
        metrics = train(replace(recipe, seed=seed), run)
    return Result("ctr", seed, metrics["test"], metrics["train_samples_per_s"], {"epochs": metrics["epochs"]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, required=True, help="folder for ctr's run directories and results.json")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY.PATH=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, args.override + [f"trainer.num_threads={args.threads}", "trainer.progress_bar=false"])
    results = []
    for seed in args.seeds:
        for side in ("ctr", "deepctr-torch"):
            result = run_ctr(recipe, args.out, seed) if side == "ctr" else run_peer(recipe, seed)
            log.info("%s seed %d: test %s, %.0f samples/s", side, seed,
                     " ".join(f"{k}={v:.4f}" for k, v in result.test.items()), result.samples_per_s)
            results.append(result)
    keys = tuple(k for k in ("auc", "gauc", "logloss") if any(k in result.test for result in results))
    table = summary_table(results, keys)
    ctr_auc = np.mean([r.test["auc"] for r in results if r.side == "ctr"])
    peer_auc = np.mean([r.test["auc"] for r in results if r.side != "ctr"])
    print(f"{recipe.model.name} on {recipe.data.dataset} ({args.recipe}, {' '.join(args.override)}), threads {args.threads}")
    print(table)
    print(f"ctr − DeepCTR-Torch test AUC: {ctr_auc - peer_auc:+.4f}")
    write_json(args.out / "results.json", {"recipe": args.recipe, "overrides": args.override, "table": table,
                                           "results": [vars(r) for r in results]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
