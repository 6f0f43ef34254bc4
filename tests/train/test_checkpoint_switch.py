"""A distributed checkpoint whose save a kill stopped between its two renames (``last``
moved aside to ``.last.old``, the whole new ``.last.tmp`` not yet in its place) is still the
run's checkpoint: ``--resume`` finds something to resume and reads the new one's state."""

import json

from ctr.train.checkpoints import STATE_FILE, is_distributed_checkpoint, read_state
from ctr.train.rundir import RunDir


def checkpoint(path, step):
    """A distributed checkpoint folder at ``path`` whose ctr.json says ``step``."""
    path.mkdir(parents=True)
    (path / ".metadata").write_bytes(b"dcp")
    (path / STATE_FILE).write_text(json.dumps({"step": step}))


def test_a_save_stopped_between_its_renames_leaves_a_run_to_resume_from_the_new_checkpoint(tmp_path):
    run = RunDir(tmp_path / "run")
    checkpoint(run.checkpoints / ".last.old", 10)
    checkpoint(run.checkpoints / ".last.tmp", 20)
    assert run.started
    assert is_distributed_checkpoint(run.checkpoints / "last")
    assert read_state(run.checkpoints / "last")["step"] == 20


def test_a_first_save_killed_before_its_rename_leaves_nothing_to_resume(tmp_path):
    run = RunDir(tmp_path / "run")
    checkpoint(run.checkpoints / ".last.tmp", 10)  # its ranks' files may be half written
    assert not run.started and not is_distributed_checkpoint(run.checkpoints / "last")
