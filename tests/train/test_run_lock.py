"""The lock that holds a run (or results) folder for one ``ctr`` process."""

import fcntl
from pathlib import Path

import pytest

from ctr.errors import UserError
from ctr.train.rundir import held


def test_a_lock_file_removed_between_open_and_lock_is_not_taken(tmp_path, monkeypatch):
    """The holder removed its lock file just after this process opened it, and a third process
    made and locked a new one: this process, locking the removed file, would train beside the
    third. It sees the file is no longer the one at the path, retries, and is refused."""
    lock, third = tmp_path / ".run.lock", []
    real_open = Path.open

    def opened_then_replaced(self, *args, **kwargs):
        handle = real_open(self, *args, **kwargs)
        if self == lock and not third:
            self.unlink()
            third.append(real_open(self, "w"))
            fcntl.flock(third[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
        return handle

    monkeypatch.setattr(Path, "open", opened_then_replaced)
    with pytest.raises(UserError, match="run: another ctr process is training"):
        with held(tmp_path / "run", "is training"):
            pass
    third[0].close()


def test_the_lock_is_taken_again_after_its_holder_is_done(tmp_path):
    with held(tmp_path / "run", "is training"):
        assert (tmp_path / ".run.lock").exists()
    with held(tmp_path / "run", "is training"):
        pass
    assert not (tmp_path / ".run.lock").exists()


def test_a_folder_named_dot_is_locked_beside_it_not_inside(tmp_path, monkeypatch):
    """``--out .``: the lock goes beside the folder as for any other name, so an empty folder
    stays empty (a lock inside it would be a file no run writes, and the folder refused)."""
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    with held(Path("."), "is training"):
        assert (tmp_path / ".run.lock").exists()
        assert list((tmp_path / "run").iterdir()) == []


def test_two_names_of_one_folder_share_its_lock(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    with held(tmp_path / "run", "is training"):
        with pytest.raises(UserError, match="another ctr process is training"):
            with held(Path("."), "is training"):
                pass


def test_the_folders_made_for_the_lock_go_with_it_when_left_empty(tmp_path):
    """A run refused before it wrote anything (or one that removed what it wrote) left the
    folders made for its lock beside ``--out``; those holding something stay."""
    with held(tmp_path / "new" / "deeper" / "run", "is training"):
        assert (tmp_path / "new" / "deeper" / ".run.lock").exists()
    assert list(tmp_path.iterdir()) == []
    with held(tmp_path / "new" / "deeper" / "run", "is training"):
        (tmp_path / "new" / "kept").write_text("")
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["kept"]


def test_a_lock_folder_another_holder_removes_meanwhile_is_made_again(tmp_path, monkeypatch):
    """Its holder, done, removed the folder it made for its lock between this process's making
    of it and the lock's open: the open retries, and the lock is taken."""
    lock, removed = tmp_path / "new" / ".run.lock", []
    real_open = Path.open

    def removed_before_open(self, *args, **kwargs):
        if self == lock and not removed:
            removed.append(self.parent.rmdir())
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", removed_before_open)
    with held(tmp_path / "new" / "run", "is training"):
        assert lock.exists()


def test_a_folder_an_outer_holder_holds_stays_while_it_holds_it(tmp_path):
    """``ctr tune`` holds its --out, not made yet, while a point's run holds a folder inside: the
    point's lock made --out for itself but must not remove it under the outer holder."""
    outer = tmp_path / "new"
    with held(outer, "is tuning"):
        with held(outer / "runs" / "p-s0", "is training"):
            pass
        assert outer.is_dir() and (tmp_path / ".new.lock").exists()


def test_the_folders_made_for_the_lock_go_where_an_inner_one_is_gone(tmp_path):
    """An inner folder made for the lock that something removed meanwhile is no reason to keep
    the empty ones above it."""
    with held(tmp_path / "new" / "deeper" / "run", "is training"):
        (tmp_path / "new" / "deeper" / ".run.lock").unlink()
        (tmp_path / "new" / "deeper").rmdir()
    assert list(tmp_path.iterdir()) == []
