"""Progress of a long step: a tqdm bar on a terminal, and log lines every 10% everywhere.

The log lines are what an Airflow task log shows; the bar is for people at a terminal
(tqdm turns itself off when stderr is not a terminal, unless `bar=True`).
"""

from __future__ import annotations

import logging
import time

from tqdm import tqdm

log = logging.getLogger("rakuten_mlops.ingest")


class Progress:
    def __init__(self, what: str, total: int, unit: str, bar: bool | None = None, steps: int = 10):
        self.what, self.total, self.unit = what, total, unit
        self.done = 0
        self._step = max(total // steps, 1)
        self._next_log = self._step
        self._start = time.perf_counter()
        # bar=None: a bar only when stderr is a terminal. bar=False: log lines only.
        self._bar = tqdm(total=total, desc=what, unit=unit, leave=False, dynamic_ncols=True,
                         disable=None if bar is None else not bar)
        log.info("%s: %d %s to process", what, total, unit)

    def update(self, count: int = 1) -> None:
        self.done += count
        self._bar.update(count)
        if self.done >= self._next_log and self.done < self.total:
            self._log()
            self._next_log = (self.done // self._step + 1) * self._step

    def _log(self) -> None:
        elapsed = time.perf_counter() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        percent = 100.0 * self.done / self.total if self.total else 100.0
        log.info("%s: %d/%d %s (%.0f%%, %.0f %s/s)", self.what, self.done, self.total,
                 self.unit, percent, rate, self.unit)

    def close(self) -> None:
        self._bar.close()
        self._log()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
