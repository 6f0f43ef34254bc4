"""Where a training step spends its time, by phase (for ``ctr bench train``).

``CTRTask.training_step`` wraps its phases — ``embedding`` (lookup), ``dense`` (model and
loss), ``backward`` (dense backward and the embedding update fused into it), ``optimizer``
(dense step) — in its ``PhaseClock``. The default clock does nothing. ``WallClock`` sums host
seconds per phase; ``EventClock`` records CUDA events in stream order and sums the GPU time
between them once the run is over, without making the host wait during the run. Time between
one step's end and the next step's start is the ``data`` phase (loading plus idle time).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import torch

PHASES = ("data", "embedding", "dense", "backward", "optimizer")


class PhaseClock:
    """A clock that records nothing (the training default)."""

    enabled = False

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        yield

    def totals(self) -> dict[str, float]:
        """Seconds per phase (empty for this clock)."""
        return {}


class WallClock(PhaseClock):
    """Host seconds per phase while ``enabled``."""

    def __init__(self) -> None:
        self.enabled = False
        self.seconds = {phase: 0.0 for phase in PHASES}
        self._last_end: float | None = None

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        start = time.perf_counter()
        if phase == "embedding" and self._last_end is not None:
            self.seconds["data"] += start - self._last_end
        yield
        self._last_end = time.perf_counter()
        self.seconds[phase] += self._last_end - start

    def totals(self) -> dict[str, float]:
        return dict(self.seconds)


class EventClock(PhaseClock):
    """GPU seconds per phase while ``enabled``, from CUDA events on the current stream."""

    def __init__(self, device: torch.device):
        self.enabled = False
        self.device = device
        self.marks: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        yield
        end.record()
        self.marks.append((phase, begin, end))

    def totals(self) -> dict[str, float]:
        torch.cuda.synchronize(self.device)
        seconds = {phase: 0.0 for phase in PHASES}
        previous_end = None
        for phase, begin, end in self.marks:
            if phase == "embedding" and previous_end is not None:
                seconds["data"] += previous_end.elapsed_time(begin) / 1e3
            seconds[phase] += begin.elapsed_time(end) / 1e3
            previous_end = end
        return seconds
