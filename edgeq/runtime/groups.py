"""Which timestep group a denoising call belongs to: the deployable's side of timestep groups.

Groups are stored by timestep value (``t_min``..``t_max``), not step index, so a deployed build
picks the right group under another scheduler or step count: the group whose interval is nearest.
"""

from __future__ import annotations

from typing import Any


def group_for(groups: list[Any], t: float) -> int:
    """The index of the group (a dict or an object with ``t_min``/``t_max``) nearest to timestep ``t``."""

    def dist(g) -> float:
        lo, hi = (g["t_min"], g["t_max"]) if isinstance(g, dict) else (g.t_min, g.t_max)
        return 0.0 if lo <= t <= hi else min(abs(t - lo), abs(t - hi))

    return min(range(len(groups)), key=lambda i: dist(groups[i]))
