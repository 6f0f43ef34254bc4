"""Atomic writes: a reader sees the old file or the new one, and a killed writer's temporary
does not outlive the next write of the same file."""

import os
import subprocess
import sys

from ctr.atomic import atomic_path, atomic_write

KILLED_WRITER = """
import os, signal, sys
from ctr.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.mkdir()
    (tmp / "part").write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "scores.parquet"
    atomic_write(target, "old")
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)])
    assert writer.wait() == -9
    assert [p.name for p in tmp_path.iterdir() if p.name != "scores.parquet"] == [f".scores.parquet.tmp-{writer.pid}"]
    assert target.read_text() == "old"  # the kill left the old file whole
    atomic_write(target, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.parquet"] and target.read_text() == "new"


def test_a_live_writers_temporary_and_other_names_are_kept(tmp_path):
    target = tmp_path / "model.pt2"
    kept = [f".model.pt2.tmp-{os.getppid()}", ".model.pt2.tmp-notes", ".other.pt2.tmp-999999999"]
    for name in kept:
        (tmp_path / name).write_text("x")
    with atomic_path(target) as tmp:
        tmp.write_text("program")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["model.pt2"])
