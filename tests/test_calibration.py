"""Streaming statistics, range selection and timestep grouping."""

from __future__ import annotations

import numpy as np
import pytest

from edgeq.calibrate.grouping import by_profile, uniform
from edgeq.calibrate.histogram import BINS, Hist, _qparams, expected_mse, merge_all, select_range, select_shared_range
from edgeq.errors import EdgeqError
from edgeq.runtime.groups import group_for


def data(seed: int = 0, n: int = 50_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.standard_normal(n) * 0.7 + 0.3, rng.standard_t(3, n // 50) * 4]).astype(np.float32)


def test_histogram_in_pieces_equals_at_once():
    x = data()
    whole = Hist.empty()
    whole.add(x)
    parts = []
    for chunk in np.array_split(x, 9):
        h = Hist.empty()
        h.add(chunk * 1.0)
        parts.append(h)
    merged = merge_all(parts)
    streamed = Hist.empty()
    for chunk in np.array_split(x, 9):
        streamed.add(chunk)
    for h in (merged, streamed):
        assert h.exp == whole.exp and h.n == whole.n
        np.testing.assert_array_equal(h.counts, whole.counts)
        assert (h.lo, h.hi) == (whole.lo, whole.hi)
        assert h.sumsq == pytest.approx(whole.sumsq, rel=1e-9)


def test_growing_keeps_every_value_in_its_bin():
    h = Hist.empty()
    h.add(np.array([0.001, -0.002], np.float32))
    h.add(np.array([37.0, -5.0], np.float32))
    assert h.counts.sum() == 4
    edges = np.arange(2 * BINS + 1) * h.width - h.range
    for v in (0.001, -0.002, 37.0, -5.0):
        i = int(np.searchsorted(edges, v, side="right")) - 1
        assert h.counts[i] >= 1


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mse_clipping_matches_brute_force(seed, symmetric):
    """The histogram estimate picks a range whose true MSE is within 2% of the brute-force best."""
    x = data(seed)
    h = Hist.empty()
    h.add(x)

    def true_mse(lo: float, hi: float) -> float:
        s, zp, qmin, qmax = _qparams(lo, hi, symmetric)
        q = np.clip(np.round(x / s) + zp, qmin, qmax)
        return float(((x - (q - zp) * s) ** 2).mean())

    lo, hi = select_range(h, "mse", symmetric)
    a = max(abs(h.lo), abs(h.hi))
    base = (-a, a) if symmetric else (h.lo, h.hi)
    brute = min(true_mse(base[0] * t, base[1] * t) for t in np.linspace(0.05, 1.0, 96))
    assert true_mse(lo, hi) <= brute * 1.02
    assert expected_mse(h, lo, hi, symmetric) == pytest.approx(true_mse(lo, hi), rel=0.05)
    assert true_mse(lo, hi) < true_mse(*base)  # clipping the t-distributed outliers pays


def test_percentile_and_minmax():
    x = data()
    h = Hist.empty()
    h.add(x)
    assert select_range(h, "minmax", False) == (float(x.min()), float(x.max()))
    lo, hi = select_range(h, "percentile", False, percentile=99.9)
    assert abs(hi - np.percentile(x, 99.9)) <= 2 * h.width and abs(lo - np.percentile(x, 0.1)) <= 2 * h.width
    t = select_range(h, "entropy", True)[1]
    assert np.percentile(np.abs(x), 99) <= t <= np.abs(x).max()


def test_constant_and_non_finite_tensors():
    h = Hist.empty()
    h.add(np.zeros(100, np.float32))
    lo, hi = select_range(h, "mse", False)
    s, *_ = _qparams(lo, hi, False)
    assert np.isfinite(s) and s > 0
    with pytest.raises(FloatingPointError):
        h.add(np.array([1.0, np.nan], np.float32))


def test_shared_range_balances_groups():
    rng = np.random.default_rng(0)
    small, large = Hist.empty(), Hist.empty()
    small.add(rng.standard_normal(20000).astype(np.float32) * 0.1)
    large.add(rng.standard_normal(20000).astype(np.float32) * 10)
    lo, hi = select_shared_range([small, large], [1, 1], "mse", True)
    assert select_range(small, "mse", True)[1] < hi < select_range(large, "mse", True)[1] * 1.0001


def test_uniform_groups():
    ts = list(np.linspace(999, 0, 20))
    gs = uniform(ts, 4)
    assert [len(g.steps) for g in gs] == [5, 5, 5, 5]
    assert gs[0].t_max == 999 and gs[-1].t_min == 0
    assert [g.steps for g in uniform(ts, 1)] == [tuple(range(20))]


def test_profile_groups_find_plateaus():
    ts = list(np.linspace(999, 0, 12))
    prof = np.repeat(np.array([[5.0, 1.0], [3.0, 0.0], [1.0, -2.0]]), [3, 6, 3], axis=0)
    prof += np.random.default_rng(0).normal(0, 0.01, prof.shape)
    gs = by_profile(ts, prof, 3)
    assert [g.steps for g in gs] == [tuple(range(0, 3)), tuple(range(3, 9)), tuple(range(9, 12))]


def test_group_lookup_by_timestep_value():
    gs = uniform(list(np.linspace(999, 0, 20)), 4)
    assert group_for(gs, 999.0) == 0 and group_for(gs, 0.0) == 3
    assert group_for(gs, 1200.0) == 0 and group_for(gs, -5.0) == 3  # outside every interval: the nearest
    for g in gs:
        assert group_for(gs, (g.t_min + g.t_max) / 2) == g.index


def test_bad_group_counts():
    with pytest.raises(EdgeqError, match="at least 1"):
        uniform([1.0, 2.0], 0)
    with pytest.raises(EdgeqError, match="more than the 2 captured steps"):
        by_profile([1.0, 2.0], np.zeros((2, 3)), 3)
