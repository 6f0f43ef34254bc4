"""Progress of a long pass over rows: a tqdm bar on a terminal; elsewhere (a log file, a
pipe) a line every ``PROGRESS_LOG_SECONDS``, so the pass is not silent there.

Example::

    progress = RowProgress("data: encoding", bar=sys.stderr.isatty())
    for batch in batches:
        progress.update(batch.num_rows)   # logs "data: encoding: 65,536 rows read (...)"
    progress.close()
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm.auto import tqdm

log = logging.getLogger(__name__)
PROGRESS_LOG_SECONDS = 30.0  # without a progress bar (stderr not a terminal), a line this often


def shows_bars(flag: bool | None) -> bool:
    """Whether a command draws progress bars: ``flag`` (a recipe's ``trainer.progress_bar``)
    when set, else when stderr is a terminal; without them it logs a line every
    ``PROGRESS_LOG_SECONDS``."""
    return sys.stderr.isatty() if flag is None else flag


class RowProgress:
    """The rows a pass has handled (``verb``: ``read``, ``written``), under the name ``what``,
    of ``total`` when known (the bar then shows its share and time left)."""

    def __init__(self, what: str, bar: bool, verb: str = "read", total: int | None = None):
        self.what, self.verb, self.logs, self.rows = what, verb, not bar, 0
        self.bar = tqdm(desc=what, unit=" rows", total=total, disable=not bar, leave=False)
        self.start = self.logged = time.monotonic()

    def update(self, rows: int) -> None:
        self.bar.update(rows)
        self.rows += rows
        now = time.monotonic()
        if self.logs and now - self.logged >= PROGRESS_LOG_SECONDS:
            self.logged = now
            rate = self.rows / max(now - self.start, 1e-9)
            log.info("%s: %s rows %s (%s rows/s)", self.what, f"{self.rows:,}", self.verb, f"{rate:,.0f}")

    def close(self) -> None:
        self.bar.close()
