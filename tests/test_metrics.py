"""Accuracy metrics and gates."""

from __future__ import annotations

import numpy as np
import pytest

from edgeq.verify.checks import Gate
from edgeq.verify.metrics import cosine, psnr_db, sqnr_db, ssim


def naive_ssim(x: np.ndarray, y: np.ndarray, win: int = 7, peak: float = 255.0) -> float:
    """Window by window, straight from the definition (uniform window, sample covariance)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    vals = []
    for c in range(x.shape[2]):
        for i in range(x.shape[0] - win + 1):
            for j in range(x.shape[1] - win + 1):
                a, b = x[i : i + win, j : j + win, c].ravel(), y[i : i + win, j : j + win, c].ravel()
                ma, mb = a.mean(), b.mean()
                va, vb = a.var(ddof=1), b.var(ddof=1)
                cov = ((a - ma) * (b - mb)).sum() / (a.size - 1)
                vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_matches_definition():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (20, 18, 3)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 30, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, b) == pytest.approx(naive_ssim(a, b), rel=1e-9)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, b) < 1.0


def test_sqnr_psnr_cosine():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(1000)
    noise = rng.standard_normal(1000) * 0.01
    assert sqnr_db(x, x + noise) == pytest.approx(10 * np.log10((x**2).sum() / (noise**2).sum()))
    assert sqnr_db(x, x) == float("inf")
    assert cosine(x, 2 * x) == pytest.approx(1.0) and cosine(x, -x) == pytest.approx(-1.0)
    img = rng.integers(0, 256, (8, 8, 3))
    assert psnr_db(img, img) == float("inf")
    assert psnr_db(np.zeros(4), np.full(4, 255.0)) == pytest.approx(0.0)


def test_gates_know_whether_they_passed():
    assert Gate("unet", "sqnr_db", 0, 25.0, 20.0)
    assert not Gate("unet", "sqnr_db", 0, 19.9, 20.0)
    assert Gate("pipeline", "adherence_colour_drop", None, 1.0, 5.0, higher_is_better=False)
    assert not Gate("pipeline", "adherence_colour_drop", None, 6.0, 5.0, higher_is_better=False)
    assert Gate("unet", "sqnr_db", 1, float("inf"), 20.0)  # identical outputs
    assert not Gate("unet", "sqnr_db", 1, float("nan"), 20.0)
    g = Gate("unet", "sqnr_db", 2, 12.0, 20.0).to_dict()
    assert g["passed"] is False and g["group"] == 2
