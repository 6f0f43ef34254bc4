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
