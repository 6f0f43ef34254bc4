"""A loader's place in its passes over a split, saved in checkpoints so that a resumed run
continues mid-epoch with the batch the interrupted run would have trained on next.

Lightning saves the ``state_dict`` of a training loader that has one with each checkpoint
and hands it back to ``load_state_dict`` before a resumed run's first pass.
"""

from __future__ import annotations

from typing import Iterator, TypeVar

T = TypeVar("T")


class Position:
    """The epoch of a loader's latest pass and how many batches that pass has handed out.

    ``epoch`` is the epoch the next pass reads (its order is seeded by it); after
    ``load_state_dict`` the next pass starts after the saved number of batches.

    Example:
        >>> loader.load_state_dict({"epoch": 2, "batches": 5})  # doctest: +SKIP
        >>> batch = next(iter(loader))  # the 6th batch of epoch 2  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.epoch = 0
        self._skip = 0
        self._latest = [0, 0]  # [epoch, batches handed out] of the latest pass

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches"}``: the latest pass's epoch and the batches it handed out."""
        epoch, batches = self._latest
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """The next pass reads epoch ``state["epoch"]`` after its first ``state["batches"]`` batches."""
        self.epoch, self._skip = int(state["epoch"]), int(state["batches"])

    def follow_epoch(self, epoch: int) -> None:
        """The next pass reads ``epoch``: from a restored position when it is that epoch's (a
        run resumed mid-epoch), else whole (e.g. the trainer moved on to the next epoch after a
        checkpoint written at the previous epoch's last batch)."""
        if epoch != self.epoch:
            self.epoch, self._skip = epoch, 0

    def _begin_pass(self) -> tuple[int, int]:
        """The epoch and the batches to skip of a new pass; later passes read the next epochs whole."""
        epoch, skip = self.epoch, self._skip
        self.epoch, self._skip = epoch + 1, 0
        self._latest = [epoch, skip]
        return epoch, skip

    def _counted(self, batches: Iterator[T]) -> Iterator[T]:
        """``batches``, counting those handed out in the pass begun last."""
        latest = self._latest
        for batch in batches:
            latest[1] += 1
            yield batch
