"""``ctr export RUN --out model.pt2``: the run's inference model as a ``torch.export`` program.

The program takes the model's inputs as plain tensors and returns click probabilities:

    dense    float32 [B, Nd]     encoded numeric features, in ``inputs.json``'s ``dense`` order
    values   int64   [N]         ids of every sparse feature's bags, feature-major
    offsets  int64   [F * B + 1] bag boundaries in ``values`` (features in ``sparse`` order)
    →        float32 [B]         probabilities

B is dynamic (1 to 2^40), and so is N (0, every bag empty, to 2^40). The program refuses an id
outside its feature's vocabulary and a bag of more ids than ctr's encoder makes (a
categorical's one, a sequence's ``max_len``); a DIN program, a row whose behaviour sequences
hold different numbers of ids. While exporting, a batch with sequence features is
embedded as fixed-width grids (``max_len`` ids a sequence, masked) and DIN's attention runs
on every position, masked after: no shape depends on the ids. Methods whose lookups split
ids by table (``unified``, ``mde``, ``autodim``, ``ttrec``, ``optembed``'s compact tables)
look every id up in each table while tracing and keep the id's own. Native and Triton
kernels are not in the program: while ``torch.export`` traces, each kernel op's dispatch
takes its plain-torch reference path.
A compressed method exports what it stores (its compressed form). Beside ``model.pt2`` a
folder ``model.pt2.schema/`` holds ``schema.json``, ``vocab/<table>.parquet`` and
``inputs.json`` (everything a client needs to encode a raw row; docs/export.md shows how,
without ctr installed).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import sys
import traceback
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from ctr.atomic import atomic_path
from ctr.batch import Batch, JaggedFeatures
from ctr.datasets.saved import check_vocabularies, load_schema
from ctr.errors import UserError, reason, scoring_a_saved_run
from ctr.schema import OOV_ID, Schema
from ctr.train.saved import finished_run, restored_task
from ctr.train.net import CTRNet

# rows and ids a batch may hold: past any memory (2^24 rows stopped a file scored at once), and
# F * MAX_BATCH + 1, the offsets' length, stays within int64 up to 2^22 features
MAX_BATCH = 1 << 40
MAX_VALUES = 1 << 40


class InferenceModel(nn.Module):
    """A trained net over plain tensors: (dense [B, Nd], values [N], offsets [F*B+1]) →
    probabilities [B]."""

    def __init__(self, net: CTRNet, keys: list[str]):
        super().__init__()
        self.net = net
        self.keys = keys

    def forward(self, dense: Tensor, values: Tensor, offsets: Tensor) -> Tensor:
        sparse = JaggedFeatures(self.keys, values, offsets)
        logits, _ = self.net(Batch(dense, sparse, dense.new_zeros(dense.shape[0])))
        return torch.sigmoid(logits.float())


def example_inputs(schema: Schema, batch: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    """Inputs of ``batch`` rows: zero numerics and one OOV id per bag."""
    num_sparse = len(schema.sparse_features)
    dense = torch.zeros(batch, len(schema.dense_features))
    values = torch.full((num_sparse * batch,), OOV_ID, dtype=torch.int64)
    return dense, values, torch.arange(num_sparse * batch + 1, dtype=torch.int64)


def export_program(net: CTRNet, schema: Schema) -> torch.export.ExportedProgram:
    """``torch.export`` of ``net`` (in eval mode) with a dynamic batch and number of ids."""
    keys = [info.spec.name for info in schema.sparse_features]
    model = InferenceModel(net.eval(), keys).eval()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    ids = torch.export.Dim("ids", min=0, max=MAX_VALUES)  # every bag of a batch may be empty
    shapes = ({0: batch}, {0: ids}, {0: len(keys) * batch + 1})
    # size-oblivious: a batch of one takes the same graph (no guard that B is not 1 from a
    # contiguity check of a view)
    with torch.no_grad(), torch.fx.experimental._config.patch(backed_size_oblivious=True), _tracer_logs_quiet():
        try:
            program = torch.export.export(model, example_inputs(schema), dynamic_shapes=shapes)
        except Exception as err:  # torch's tracing errors are many pages long: the first line and where
            raise UserError(f"torch.export cannot trace {type(net.model).__name__} over {type(net.embedding).__name__}"
                            f"{_traced_at(err)}: {reason(err)}") from err
    _check_one_row(program, net, schema)
    return program


def _check_one_row(program: torch.export.ExportedProgram, net: CTRNet, schema: Schema) -> None:
    """Refuses a program that scores a batch of one row other than as [1]: traced at a batch
    of two, a model's ``squeeze()`` leaves one row a scalar, which ``ctr predict`` refuses."""
    with torch.no_grad():
        net.check_logits(program.module()(*example_inputs(schema, batch=1)), 1)


@contextmanager
def _tracer_logs_quiet() -> Iterator[None]:
    """Before torch.export raises on a line it cannot trace, its shape tracer logs a warning
    and it prints the partial graph to stderr (pages); the one-line error says what matters.
    What a successful export prints is passed on."""
    logger = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    level = logger.level
    logger.setLevel(logging.ERROR)
    printed = io.StringIO()
    try:
        with redirect_stderr(printed):
            yield
        sys.stderr.write(printed.getvalue())
    finally:
        logger.setLevel(level)


def _traced_at(err: BaseException) -> str:
    """`` at FILE:LINE``: the last frame of ``err``'s traceback outside torch (the model's or
    the method's line that could not be traced), or nothing."""
    torch_dir = str(Path(torch.__file__).parent)
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith(torch_dir)]
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def inputs_description(schema: Schema) -> dict[str, Any]:
    """What ``inputs.json`` says: the order of the inputs and how a raw row is encoded."""
    dense = [
        {"name": i.spec.name, "column": i.spec.column, "transform": i.spec.transform, "fill": i.spec.fill,
         "mean": i.numeric.mean, "std": i.numeric.std, "boundaries": i.numeric.boundaries}
        for i in schema.dense_features
    ]
    rows = schema.tables()
    sparse = [
        {"name": i.spec.name, "column": i.spec.column, "kind": i.spec.kind, "table": i.table, "vocab_size": rows[i.table],
         "transform": i.spec.transform, "first_id": 1 + i.spec.oov_buckets, "oov_id": OOV_ID,
         "oov_buckets": i.spec.oov_buckets, "num_ids": i.spec.num_ids, "splitter": i.spec.splitter,
         "max_len": i.spec.max_len if i.spec.kind == "sequence" else 1}  # the most ids the program takes in a bag
        for i in schema.sparse_features
    ]
    return {"inputs": ["dense", "values", "offsets"], "output": "probability", "dense": dense, "sparse": sparse,
            "label": schema.label}


ARCHIVE_SLACK_BYTES = 1 << 20  # the archive's graph, signatures and zip records beside the tensors


def _check_room(program: torch.export.ExportedProgram, out: Path) -> None:
    """Refuses a program whose tensors do not fit in the free space of ``out``'s disk: torch's
    archive writer aborts the process on a full disk (its error is raised again while it is
    destroyed). A file system that reports no size (total 0) is not checked."""
    tensors = [*program.state_dict.values(), *program.constants.values()]
    needed = sum(t.nbytes for t in tensors if isinstance(t, Tensor)) + ARCHIVE_SLACK_BYTES
    usage = shutil.disk_usage(out.parent)
    if usage.total and needed > usage.free:
        raise UserError(f"{out}: the program needs ~{needed / 1e6:.3g} MB, {usage.free / 1e6:.3g} MB free on its disk; "
                        "free space there or choose another --out")


@scoring_a_saved_run()
def export_run(run_root: Path, out: Path) -> Path:
    """Exports the best checkpoint of a finished run to ``out`` and its schema beside it
    (``<out>.schema/``); both written atomically, the schema first and an earlier program
    removed before it: a kill part-way leaves an export without its program, never one
    program beside another run's schema. Returns the schema folder."""
    run, recipe, ckpt = finished_run(run_root, out)
    beside = out.with_name(out.name + ".schema")
    if beside.exists() and not beside.is_dir():
        raise UserError(f"{beside}: exists and is not a folder (the export's schema goes there); choose another --out")
    schema = load_schema(run.schema)
    check_vocabularies(run.schema, schema)  # copied beside the program: an export without them scores nothing
    task = restored_task(run, recipe, schema, ckpt)
    program = export_program(task.net, schema)
    with atomic_path(out) as program_file:
        _check_room(program, out)
        with program_file.open("wb") as file:
            torch.export.save(program, file)
        with atomic_path(beside) as tmp:
            tmp.mkdir()
            shutil.copy2(run.schema / "schema.json", tmp / "schema.json")
            shutil.copytree(run.schema / "vocab", tmp / "vocab")
            (tmp / "inputs.json").write_text(json.dumps(inputs_description(schema), indent=1) + "\n")
            out.unlink(missing_ok=True)  # an earlier export's program never stands beside this schema
    return beside
