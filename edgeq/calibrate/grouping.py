"""Timestep groups: contiguous runs of denoising steps that share activation ranges.

Groups are stored by timestep value (``t_min``..``t_max``), not step index, so a deployed build
picks the right group under another scheduler or step count: the group whose interval is nearest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edgeq.errors import EdgeqError


@dataclass(frozen=True)
class Group:
    index: int
    steps: tuple[int, ...]
    t_min: float
    t_max: float

    def to_dict(self) -> dict:
        return asdict(self)


def _groups(timesteps: list[float], bounds: list[int]) -> list[Group]:
    out = []
    for g, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        ts = [timesteps[s] for s in range(a, b)]
        out.append(Group(g, tuple(range(a, b)), float(min(ts)), float(max(ts))))
    return out


def _check(n: int, steps: int) -> None:
    if n < 1:
        raise EdgeqError(f"--groups must be at least 1, got {n}")
    if n > steps:
        raise EdgeqError(f"--groups {n} is more than the {steps} captured steps", f"use at most {steps} groups")


def uniform(timesteps: list[float], n: int) -> list[Group]:
    """``n`` groups of (nearly) equal numbers of consecutive steps."""
    _check(n, len(timesteps))
    bounds = [round(i * len(timesteps) / n) for i in range(n + 1)]
    return _groups(timesteps, bounds)


def by_profile(timesteps: list[float], profile: np.ndarray, n: int) -> list[Group]:
    """``n`` groups of consecutive steps minimising the spread of range profiles inside each group.

    ``profile`` is [steps, tensors] (log2 |max| per tensor). Optimal 1-D segmentation by dynamic
    programming on the within-group sum of squared deviations: steps whose profiles are alike merge.
    """
    _check(n, len(timesteps))
    S = len(timesteps)
    csum = np.concatenate([np.zeros((1, profile.shape[1])), np.cumsum(profile, axis=0)])
    csq = np.concatenate([np.zeros(1), np.cumsum((profile**2).sum(axis=1))])

    def cost(a: int, b: int) -> float:  # steps a..b-1
        m = b - a
        s = csum[b] - csum[a]
        return float(csq[b] - csq[a] - (s**2).sum() / m)

    best = np.full((n + 1, S + 1), np.inf)
    arg = np.zeros((n + 1, S + 1), np.int64)
    best[0, 0] = 0.0
    for k in range(1, n + 1):
        for b in range(k, S + 1):
            for a in range(k - 1, b):
                c = best[k - 1, a] + cost(a, b)
                if c < best[k, b] - 1e-12:
                    best[k, b], arg[k, b] = c, a
    bounds = [S]
    for k in range(n, 0, -1):
        bounds.append(int(arg[k, bounds[-1]]))
    return _groups(timesteps, bounds[::-1])
