"""Peak memory of a stage: the resident set of this process and every process it started, sampled.

Statistics run in a child process and a Ray cluster in several (:mod:`edgeq.stages.cluster`), so the
process's own ``ru_maxrss`` would miss them; the whole process tree is read from ``/proc`` (Linux)
every ``interval`` seconds. Elsewhere the sampler falls back to this process's own RSS, if psutil is
there, else records nothing.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def tree_rss(pid: int | None = None) -> int:
    """Resident bytes of a process and all its descendants (0 where /proc is not there)."""
    if not Path("/proc/self/statm").is_file():
        return _psutil_rss()
    total, todo = 0, [pid or os.getpid()]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
            continue
    return total


ROOT_ENV = "EDGEQ_BUILD_PID"  # set in edgeq's child processes: the process that started them


def build_rss() -> int:
    """Resident bytes of the whole build: from the process that started this child (:mod:`edgeq.isolate`
    sets ``EDGEQ_BUILD_PID``), else from this process. A statistics child that counted only itself
    planned an SDXL UNet at 1024 px to 20 GB while the build process beside it held 4.5 GB more:
    23.1 GB (2026-12-04)."""
    root = os.environ.get(ROOT_ENV, "")
    return tree_rss(int(root)) if root.isdigit() and Path(f"/proc/{root}").exists() else tree_rss()


def _psutil_rss() -> int:
    try:
        import psutil
    except ImportError:
        return 0
    return int(psutil.Process().memory_info().rss)


class PeakRss:
    """``with PeakRss() as peak: ...`` then ``peak.gb``: the largest process-tree RSS seen inside."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="edgeq-peak-rss", daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, tree_rss())
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakRss:
        self.peak = tree_rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss())

    @property
    def gb(self) -> float:
        return round(self.peak / 2**30, 2)
