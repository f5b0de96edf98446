"""Accuracy metrics against the full-precision model. numpy only."""

from __future__ import annotations

import numpy as np


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio: 10 log10(sum ref^2 / sum (ref - test)^2)."""
    ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    noise = float(((ref - test) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float((ref**2).sum()) / noise)


def cosine(ref: np.ndarray, test: np.ndarray) -> float:
    a, b = np.asarray(ref, np.float64).ravel(), np.asarray(test, np.float64).ravel()
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return 1.0 if den == 0 else float(a @ b / den)


def psnr_db(ref: np.ndarray, test: np.ndarray, peak: float = 255.0) -> float:
    mse = float(((np.asarray(ref, np.float64) - np.asarray(test, np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def _box(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k windows (valid positions) of each channel, by summed-area tables."""
    c = np.pad(x, ((1, 0), (1, 0), (0, 0))).cumsum(0).cumsum(1)
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def ssim(ref: np.ndarray, test: np.ndarray, peak: float = 255.0, win: int = 7) -> float:
    """Mean SSIM over channels with a uniform window (scikit-image's default: 7x7, sample covariance)."""
    x, y = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    win = min(win, x.shape[0], x.shape[1])
    win -= 1 - win % 2
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    n = win * win
    mx, my = _box(x, win), _box(y, win)
    cov = n / (n - 1)
    vx = (_box(x * x, win) - mx * mx) * cov
    vy = (_box(y * y, win) - my * my) * cov
    vxy = (_box(x * y, win) - mx * my) * cov
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())
