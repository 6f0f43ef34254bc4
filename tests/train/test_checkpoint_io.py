"""Lightning's checkpoints as ctr writes them (``AtomicCheckpointIO``)."""

import errno
import io

import pytest
import torch

from ctr.train import callbacks
from ctr.train.callbacks import AtomicCheckpointIO


class _FullDisk(io.BytesIO):
    """A file on a disk with ``room`` bytes left: a write past it fails as a full disk does."""

    def __init__(self, room: int):
        super().__init__()
        self.room = room

    def write(self, data) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def test_a_full_disk_is_raised_naming_the_checkpoint_and_leaves_no_file(tmp_path, monkeypatch):
    """torch.save reports a failed write as ``RuntimeError: ... unexpected pos``: a traceback
    that never said the disk was full."""
    monkeypatch.setattr(callbacks, "open", lambda path, mode: _FullDisk(room=4096), raising=False)
    target = tmp_path / "last.ckpt"
    with pytest.raises(OSError) as err:
        AtomicCheckpointIO().save_checkpoint({"weights": torch.zeros(10_000)}, target)
    assert (err.value.errno, err.value.filename) == (errno.ENOSPC, str(target))
    assert not list(tmp_path.iterdir())


def test_a_checkpoint_reads_back(tmp_path):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"weights": torch.arange(5.0), "step": 3}, target)
    loaded = torch.load(target, weights_only=True)
    assert loaded["step"] == 3 and torch.equal(loaded["weights"], torch.arange(5.0))
