"""The CSV log a resumed run keeps: the rows logged before its checkpoint, read from a log
that a kill may have cut short (its last line, or its header) or that is not a training log;
what cannot be read is left out with a warning, in the one-process and the distributed log."""

import csv
import errno
import logging
import os

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from ctr.train.distributed_epochs import CurveLog
from ctr.recipe import recipe_from_dict
from ctr.train.loop import keep_log_rows, trainer_for
from ctr.train.rundir import RunDir
from tests.conftest import tiny_recipe

LIGHTNING = ("epoch,lr/dense,lr/embedding,step,train/loss,valid/auc,valid/logloss\r\n"
             "0,,,9,,0.47,0.50\r\n"
             "0,0.001,0.05,9,,,\r\n"
             "1,,,19,0.59,,\r\n"
             "1,,,19,,0.53,0.50\r\n")
DISTRIBUTED = ("epoch,lr/dense,lr/embedding,step,train/loss,valid/auc,valid/gauc,valid/logloss\r\n"
               "0,0.001,0.05,9,,,,\r\n"
               "0,,,9,,0.47,,0.50\r\n"
               "1,,,19,0.59,,,\r\n")


def ctr_logger(tmp_path):
    """The CSV logger of a run's fit in ``tmp_path`` (``logs/metrics.csv``)."""
    return trainer_for(recipe_from_dict(tiny_recipe(tmp_path)), RunDir(tmp_path), False, []).logger


def kept_by_lightning(tmp_path, text, step=20):
    """The log ``keep_log_rows`` leaves of ``text`` for a resume at ``step``, and its rows."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.csv").write_bytes(text.encode())
    trainer = L.Trainer(logger=ctr_logger(tmp_path), enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    rows = keep_log_rows(trainer, step)
    trainer.logger.experiment.save()
    path = tmp_path / "logs" / "metrics.csv"
    return (path.read_bytes().decode() if path.exists() else ""), rows


def test_a_complete_log_keeps_the_rows_before_the_checkpoint(tmp_path, caplog):
    text, rows = kept_by_lightning(tmp_path, LIGHTNING, step=10)
    assert text == "".join(LIGHTNING.splitlines(keepends=True)[:3]) and len(rows) == 2
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


@pytest.mark.parametrize("cut", [10, 3, 1])
def test_a_last_row_cut_short_is_left_out_with_a_warning(tmp_path, caplog, cut):
    text, rows = kept_by_lightning(tmp_path, LIGHTNING[:-cut])
    assert text == "".join(LIGHTNING.splitlines(keepends=True)[:-1]) and len(rows) == 3
    assert "metrics.csv" in caplog.text and "cut short" in caplog.text


def test_a_row_whose_step_is_not_a_number_is_left_out_with_a_warning(tmp_path, caplog):
    lines = LIGHTNING.splitlines(keepends=True)
    text, rows = kept_by_lightning(tmp_path, "".join(lines[:2] + ["0,,,x9,,0.47,0.50\r\n"] + lines[2:]))
    assert text == LIGHTNING and len(rows) == 4
    assert "metrics.csv" in caplog.text and "1 row(s)" in caplog.text


@pytest.mark.parametrize("cut", [LIGHTNING.index("\r\n") - 5, 4])
def test_a_header_cut_short_keeps_no_row_and_no_bogus_column(tmp_path, caplog, cut):
    text, rows = kept_by_lightning(tmp_path, LIGHTNING[:cut])
    assert text == "" and rows == []
    assert "cut short" in caplog.text


def test_a_log_without_a_step_column_keeps_no_row(tmp_path, caplog):
    text, rows = kept_by_lightning(tmp_path, "a,b\r\n1,2\r\n")
    assert text == "" and rows == []
    assert "not a training log" in caplog.text


def test_the_distributed_log_keeps_no_row_of_a_foreign_column(tmp_path, caplog):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,other\n0,9,1\n")
    CurveLog(path, True, keep_before=20)
    assert not path.exists()
    assert "not a training log" in caplog.text


@pytest.mark.parametrize("cut", [0, 10, len(DISTRIBUTED) - 30])
def test_the_distributed_log_keeps_its_complete_rows(tmp_path, caplog, cut):
    caplog.set_level(logging.WARNING)
    path = tmp_path / "logs" / "metrics.csv"
    path.parent.mkdir()
    path.write_bytes(DISTRIBUTED[:len(DISTRIBUTED) - cut].encode())
    CurveLog(path, True, keep_before=20)
    lines = DISTRIBUTED.splitlines(keepends=True)
    kept = {0: lines, 10: lines[:-1], len(DISTRIBUTED) - 30: []}[cut]
    assert (path.read_bytes().decode() if path.exists() else "") == "".join(kept)
    assert ("cut short" in caplog.text) == (cut > 0)


def test_the_distributed_log_is_written_as_lightnings_csv_logger_writes_it(tmp_path):
    """The distributed loop's rows, a column first logged in a later row among them (gauc), as
    Lightning's CSV logger writes them: its header (the columns logged so far, sorted), float32
    metric values, integer epoch and step."""
    rows = [(9, {"epoch": 0, "train/loss": 0.6931471805599453}),
            (9, {"epoch": 0, "valid/auc": 0.47930036910185214, "valid/logloss": 0.5068910987933235}),
            (9, {"epoch": 0, "lr/dense": 0.001, "lr/embedding": 0.05}),
            (19, {"epoch": 1, "valid/auc": 0.5366275396535098, "valid/logloss": 0.501, "valid/gauc": 0.52})]
    lightning = CSVLogger(tmp_path, name="one", version="").experiment
    for step, row in rows:
        lightning.log_metrics({k: torch.tensor(v, dtype=torch.float32) if "/" in k else v for k, v in row.items()},
                              step=step)
        lightning.save()
    curve = CurveLog(tmp_path / "two" / "metrics.csv", True, keep_before=0)
    for step, row in rows:
        curve.write({**row, "step": step})
    assert curve.path.read_bytes() == (tmp_path / "one" / "metrics.csv").read_bytes()


def failing_writes(monkeypatch):
    """Makes every CSV row write fail as on a full disk (or as a kill stops it)."""
    def full(self, rows):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(csv.DictWriter, "writerows", full)


def test_a_resume_that_cannot_write_the_kept_rows_leaves_the_log_as_it_was(tmp_path, monkeypatch):
    """Lightning's logger deleted the log as it was made, before the kept rows were written
    back: a resume stopped by a full disk lost every row, and the next resume kept none."""
    failing_writes(monkeypatch)
    with pytest.raises(OSError):
        kept_by_lightning(tmp_path, LIGHTNING)
    assert (tmp_path / "logs" / "metrics.csv").read_bytes() == LIGHTNING.encode()


def test_a_new_column_that_cannot_be_written_leaves_the_log_as_it_was(tmp_path, monkeypatch):
    """A column logged for the first time (the first validation's, the first lr row) rewrites
    the log under a new header: Lightning rewrote it in place, so a kill (or a full disk) there
    left it cut short, the rows before the run's checkpoint lost to its resume."""
    writer = ctr_logger(tmp_path).experiment
    writer.log_metrics({"epoch": 0, "train/loss": 0.6}, step=9)
    writer.save()
    before = (tmp_path / "logs" / "metrics.csv").read_bytes()
    failing_writes(monkeypatch)
    writer.log_metrics({"epoch": 0, "valid/auc": 0.5}, step=9)
    with pytest.raises(OSError):
        writer.save()
    assert (tmp_path / "logs" / "metrics.csv").read_bytes() == before


def test_a_rewrite_that_failed_is_redone_when_the_fit_saves_again(tmp_path, monkeypatch):
    """Lightning takes a new column into the writer's keys before the rewrite under the new
    header: after a failed rewrite its ``finalize`` saved again and appended rows of one more
    field under the old header. The keys go back as they were, so that save rewrites."""
    writer = ctr_logger(tmp_path).experiment
    writer.log_metrics({"epoch": 0, "train/loss": 0.6}, step=9)
    writer.save()
    failing_writes(monkeypatch)
    writer.log_metrics({"epoch": 0, "valid/auc": 0.5}, step=9)
    with pytest.raises(OSError):
        writer.save()
    monkeypatch.undo()
    writer.save()
    with open(tmp_path / "logs" / "metrics.csv", newline="") as file:
        header, *rows = list(csv.reader(file))
    assert "valid/auc" in header and len(rows) == 2
    assert all(len(row) == len(header) for row in rows)
