"""What a search costs and leaves behind: its peak memory, its worker processes."""

from __future__ import annotations

import contextlib
import os
import threading

import psutil
from joblib.externals.loky import get_reusable_executor


class PeakMemory:
    """Peak resident memory of this process and its children (the search's workers)."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.mb = 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        me = psutil.Process(os.getpid())
        while not self._stop.is_set():
            try:
                total = me.memory_info().rss
                for child in me.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        total += child.memory_info().rss
                self.mb = max(self.mb, total / 2**20)
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def search_workers():
    """Stops joblib's worker processes (the parallel search's) when the work is done.

    They outlive the search by design (joblib reuses them for 300 s), and they inherit the
    task's stdout, stderr and supervisor sockets: Airflow's supervisor then waits 60 s for
    those to close before it calls the task finished.
    """
    try:
        yield
    finally:
        get_reusable_executor().shutdown(wait=True)
