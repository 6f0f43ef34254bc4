"""What both training loops (Lightning's, ``loop.py``, and the distributed one) watch in a
run, without Lightning: how often they log and print progress, whether a validation beats
the best, a loss that is not finite, and a run's CSV log read back on resume.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch

from ctr.errors import TrainingDiverged

log = logging.getLogger("ctr.train")
LOG_EVERY_N_STEPS = 20
PROGRESS_EVERY_N_STEPS = 100


def progress_every(batches_per_epoch: float, every: int) -> int:
    """Steps between two progress lines: ``every``, or a tenth of an epoch of
    ``batches_per_epoch`` when that is fewer (``inf``: an epoch of unknown length)."""
    if batches_per_epoch == float("inf"):
        return every
    return max(1, min(every, -(-int(batches_per_epoch) // 10)))


def beats(value: float, best: float, mode: str) -> bool:
    """Whether a monitored ``value`` is better than ``best`` (``mode``: max or min), compared
    in float32 as Lightning's checkpoint and early stopping compare the logged metric."""
    value32, best32 = torch.tensor(value, dtype=torch.float32), torch.tensor(best, dtype=torch.float32)
    return bool(value32 > best32 if mode == "max" else value32 < best32)


def warn_if_not_finite(stop_monitor: str, value: float) -> None:
    """Early stopping ends a run at a monitored value that is not finite: say so."""
    if not np.isfinite(value):
        log.warning("%s is %s: early stopping ends the run here (monitor a metric defined on this "
                    "validation split, e.g. train.early_stop.monitor: valid/logloss)", stop_monitor, value)


def loss_check_interval(device: torch.device, deferred: int = 20) -> int:
    """Steps between the host's reads of ``FiniteLoss``'s flag on ``device``: every step on
    the CPU (reading is free), every ``deferred`` steps on an accelerator (a read waits for
    the device to finish its queued work)."""
    return 1 if device.type == "cpu" else deferred


def diverged(first_bad: int, step: int) -> TrainingDiverged:
    """The error of a run whose loss was first not finite at step ``first_bad`` (counted from
    1), stopped at ``step``. Step 1's loss comes before the fit's first update, so no learning
    rate made it: the inputs or the initial weights did."""
    if first_bad == 1:
        hint = ("at step 1 the loss is of the weights before any update: not the learning rate, but the initial "
                "weights (embedding.init_std) or the inputs (numeric values past float32)")
    else:
        hint = "try a lower learning rate or train.grad_clip"
    return TrainingDiverged(f"training: the loss is not finite at step {first_bad}; stopped at step {step}, the last"
                            f" good checkpoint is kept ({hint})")


def read_log_rows(path: Path, before: int,
                  columns: tuple[str, ...] | None = None) -> tuple[list[str], list[dict[str, str]]]:
    """The header of CSV log ``path`` and its rows logged before training step ``before``. A
    kill can cut the log's last line short (rows are appended, no line end after it): that
    line is left out, and so are rows whose ``epoch`` or ``step`` is not an integer or whose
    fields do not fit the header, with a warning; a header without ``epoch`` and ``step``, or
    with a column not among ``columns`` (when given), keeps nothing."""
    with path.open(newline="", errors="replace") as file:  # line ends as written: a cut "\r\n" keeps its "\r"
        lines = file.read().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        log.warning("%s: its last line is cut short (a write was killed); it is left out", path)
        lines.pop()
    reader = csv.DictReader(lines)
    header = list(reader.fieldnames or [])
    if header and not ({"epoch", "step"} <= set(header) <= set(columns or header)):
        log.warning("%s: not a training log (its columns: %s); its rows are left out", path, ", ".join(header))
        return [], []
    read = list(reader)
    rows = [row for row in read if _whole_log_row(row)]
    if len(read) > len(rows):
        log.warning("%s: %d row(s) without an epoch and step number or with another number of columns than its"
                    " header left out", path, len(read) - len(rows))
    return header, [row for row in rows if int(row["step"]) < before]


def _whole_log_row(row: dict[str | None, str | None]) -> bool:
    """Whether a CSV log row fits its header (``csv.DictReader`` puts a row's missing fields
    at None, its extra ones under the key None) and has an integer epoch and step."""
    return None not in row and None not in row.values() and row["epoch"].isdigit() and row["step"].isdigit()
