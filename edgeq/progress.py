"""Progress bars that also print what a long stage will cost, from its first item.

``progress(items, total=n, desc=..., unit="call", knob="--calib-calls")`` is tqdm's bar plus one line
printed when the first item is done: how many items, how long the first took, and about how long the
stage will take, with the option that sets the count (the knob and its cost, before the wait). The
first item includes warm-up (session creation, caches), so the estimate errs long.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
MIN_ESTIMATE_S = 30.0  # shorter stages print no estimate


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_line(desc: str, total: int, unit: str, first_s: float, knob: str | None) -> str | None:
    """The line printed after the first item, or None for a short stage."""
    est = first_s * total
    if total < 2 or est < MIN_ESTIMATE_S:
        return None
    sets = f"; {knob} sets the count" if knob else ""
    return f"{desc}: {total} {unit}s, the first took {first_s:.2f} s: about {duration(est)} in all{sets}"


def progress(
    items: Iterable[T],
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    knob: str | None = None,
    disable=False,
) -> Iterator[T]:
    from tqdm import tqdm

    bar = tqdm(items, total=total, desc=desc, unit=unit, disable=disable)
    n = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    t0 = time.perf_counter()
    for i, item in enumerate(bar):
        yield item
        if i == 0 and n and not disable:
            line = estimate_line(desc, n, unit, time.perf_counter() - t0, knob)
            if line:
                tqdm.write(line)
