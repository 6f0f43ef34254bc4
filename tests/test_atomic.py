"""Atomic writes: a reader sees the old file or the new one, and a killed writer's temporary
does not outlive the next write of the same file; a folder replace that a kill stopped
between its renames is found and finished."""

import errno
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ctr.atomic import (
    CsvRows, atomic_path, atomic_write, check_writable, finish_replace, replace_folder, replaced_folder, staging_folder,
)
from ctr.errors import UserError

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


def folder(path, text):
    """A folder ``path`` holding one file with ``text``."""
    path.mkdir()
    (path / "part").write_text(text)
    return path


class Killed(Exception):
    """Stands for a SIGKILL."""


def test_a_folder_replace_leaves_the_new_folder_only(tmp_path):
    target = folder(tmp_path / "last", "old")
    folder(staging_folder(target), "new")
    replace_folder(target)
    assert [p.name for p in tmp_path.iterdir()] == ["last"] and (target / "part").read_text() == "new"


def test_a_folder_replace_killed_between_its_renames_is_finished_with_the_new_folder(tmp_path, monkeypatch):
    target = folder(tmp_path / "last", "old")
    folder(staging_folder(target), "new")
    rename = os.replace

    def rename_then_die(src, dst):
        rename(src, dst)
        if str(dst).endswith(".old"):
            raise Killed

    monkeypatch.setattr(os, "replace", rename_then_die)
    with pytest.raises(Killed):
        replace_folder(target)
    monkeypatch.undo()
    assert not target.exists() and replaced_folder(target) == staging_folder(target)
    finish_replace(target)
    assert [p.name for p in tmp_path.iterdir()] == ["last"] and (target / "part").read_text() == "new"


def test_a_stopped_replace_without_its_new_folder_gets_the_old_one_back(tmp_path):
    target = tmp_path / "last"
    folder(tmp_path / ".last.old", "old")
    assert replaced_folder(target) == tmp_path / ".last.old"
    finish_replace(target)
    assert [p.name for p in tmp_path.iterdir()] == ["last"] and (target / "part").read_text() == "old"


def test_a_folder_being_written_for_the_first_time_is_not_taken_for_a_stopped_replace(tmp_path):
    target = tmp_path / "last"
    folder(staging_folder(target), "half")  # no old folder aside: the staging may be half written
    assert replaced_folder(target) == target
    finish_replace(target)
    assert not target.exists() and staging_folder(target).exists()


def test_a_folder_whose_replace_fails_is_the_old_folder_again(tmp_path, monkeypatch):
    """The old folder was removed before the rename: a writer stopped between the two (here the
    rename fails) lost it; then it stayed aside (``.<name>.old``) with no folder at its path
    until the next write; now the failed rename puts it back."""
    folder = tmp_path / "schema"
    folder.mkdir()
    (folder / "schema.json").write_text("old")
    real_replace = os.replace

    def replace(src, dst):
        if os.path.basename(dst) == "schema" and ".tmp-" in os.path.basename(src):  # the new folder only
            raise OSError("stopped")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="stopped"), atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / "schema.json").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["schema"] and (folder / "schema.json").read_text() == "old"


def test_a_folder_replace_stopped_between_its_renames_gets_its_old_folder_back_on_the_next_write(tmp_path, monkeypatch):
    """The stopped writer's new folder is a dead process's temporary: the replace did not
    happen, so the next write of the folder starts from the old one, and nothing is left aside."""
    folder(tmp_path / "schema", "old")
    real_replace = os.replace

    def replace(src, dst):
        if os.path.basename(dst) == "schema":
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed), atomic_path(tmp_path / "schema") as tmp:
        folder(tmp, "new")
    monkeypatch.undo()
    assert not (tmp_path / "schema").exists()
    with atomic_path(tmp_path / "schema") as tmp:
        assert (tmp_path / "schema" / "part").read_text() == "old"
        assert [p.name for p in tmp_path.iterdir()] == ["schema"]
        folder(tmp, "newer")
    assert [p.name for p in tmp_path.iterdir()] == ["schema"] and (tmp_path / "schema" / "part").read_text() == "newer"


@pytest.mark.parametrize("text, said", [
    ("a,n\nx,1\ny\n", "results.csv:3: 1 fields, expected 2 (a damaged results file); choose another --out"),
    ("a,n\nx,1,2\n", "results.csv:2: 3 fields, expected 2 (a damaged results file); choose another --out"),
    ("a,n\nx,1.5\n", "results.csv:2: column n: not an integer: '1.5' (a damaged results file); choose another --out"),
    ("a,n\nx,\xff\n", "results.csv: not a readable results file (UnicodeDecodeError: "),
])
def test_a_damaged_results_file_is_refused_naming_its_line(tmp_path, text, said):
    """A row cut short or run long, a number column that holds no number, bytes that are not
    text: a UserError naming the file (and line), not a traceback where a caller reads it."""
    path = tmp_path / "results.csv"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(UserError) as caught:
        CsvRows(path, ["a", "n"], {"n": int})
    assert str(caught.value).startswith(f"{path}{said[len('results.csv'):]}")


def test_a_results_file_keeps_its_empty_numbers(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("a,n,v\nx,,\ny,2,0.5\n")
    assert CsvRows(path, ["a", "n", "v"], {"n": int, "v": float}).rows[1] == {"a": "y", "n": "2", "v": "0.5"}
    path.write_text("a,n,v\nx,2,abc\n")
    with pytest.raises(UserError, match=r"results\.csv:2: column v: not a number: 'abc' \(a damaged results file\)"):
        CsvRows(path, ["a", "n", "v"], {"n": int, "v": float})


def test_a_row_lacking_a_number_its_kind_of_row_holds_is_refused(tmp_path):
    """``filled`` names the columns a row must hold by what the row is (a finished row its
    metrics): one left empty was a traceback of float('') where the table was built."""
    path = tmp_path / "results.csv"
    path.write_text("status,v\nfailed,\nok,0.5\nok,\n")
    with pytest.raises(UserError, match=r"results\.csv:4: column v: not a number: '' \(a damaged results file\)"):
        CsvRows(path, ["status", "v"], {"v": float}, filled=lambda row: ("v",) if row["status"] == "ok" else ())


def test_check_writable_creates_nothing_and_names_the_path(tmp_path):
    """A refused command leaves no folder behind (the check made --out's parent first), and a
    file where a folder should be is named by the path asked for."""
    check_writable(tmp_path / "new" / "deeper" / "scores.csv")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=rf"^{re.escape(str(tmp_path / 'file' / 'a.csv'))}: cannot be written \(not a "):
        check_writable(tmp_path / "file" / "a.csv")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_an_error_writing_the_temporary_names_the_path_asked_for(tmp_path):
    """``ctr export --out /proc/m.pt2`` said ``/proc/.m.pt2.tmp-<pid>: no such file or
    directory``: a name the user never gave."""
    target = tmp_path / "m.pt2"
    with pytest.raises(PermissionError) as err:
        with atomic_path(target) as tmp:
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp))
    assert err.value.filename == str(target) and err.value.errno == errno.EACCES
    with pytest.raises(FileNotFoundError) as other:
        with atomic_path(target):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / "input.csv"))
    assert other.value.filename == str(tmp_path / "input.csv")  # another file's error is its own
    assert not list(tmp_path.iterdir())


def test_a_full_disk_named_by_no_file_names_the_path_asked_for(tmp_path):
    """pyarrow's and torch's writers report a full disk with a long text and no file name."""
    target = tmp_path / "scores.parquet"
    with pytest.raises(OSError) as err:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
    assert (err.value.filename, err.value.errno, err.value.strerror) == (str(target), errno.ENOSPC,
                                                                          "No space left on device")
    assert not list(tmp_path.iterdir())


def test_a_fifo_is_never_replaced_by_a_write(tmp_path):
    """Every atomic write refuses a path that is a fifo or a device (it put a regular file in
    place of ``/dev/null``), naming it, and writes nothing."""
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match=rf"^{re.escape(str(fifo))}: not a regular file \(a fifo\); name a file"):
        atomic_write(fifo, "text")
    with pytest.raises(UserError, match=r"not a regular file \(a character device\)"):
        check_writable(Path(os.devnull))
    assert [p.name for p in tmp_path.iterdir()] == ["out.fifo"] and stat.S_ISFIFO(fifo.lstat().st_mode)


def test_a_results_file_of_a_renamed_column_is_read_under_its_new_name(tmp_path):
    """A column renamed since (``renamed``: old name → new) is read from a file written
    before, and the next ``add`` writes the new name: the older file was refused as another
    command's."""
    path = tmp_path / "results.csv"
    path.write_text("a,old\nx,1\n")
    rows = CsvRows(path, ["a", "new"], {"new": int}, renamed={"old": "new"})
    assert rows.rows == [{"a": "x", "new": "1"}]
    rows.add({"a": "y", "new": 2})
    assert path.read_text() == "a,new\nx,1\ny,2\n"
    path.write_text("a,other\nx,1\n")
    with pytest.raises(UserError, match=r"not a results file of this command \(its columns: a, other\)"):
        CsvRows(path, ["a", "new"], renamed={"old": "new"})
