"""Streaming activation histograms and range selection.

Each histogram covers [-R, R] with ``2 * BINS`` equal bins, where R is a power of two. When data
outgrows R, R doubles and adjacent bins merge pairwise, which is exact: a histogram built in
pieces equals the one built at once over the final range. Histograms of different steps can be
merged the same way, so timestep groups are chosen after the data is seen, without a second pass.

Memory: one histogram is ``2 * BINS`` int64 counts (64 KiB at BINS = 4096) per tensor per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BINS = 2048  # per side
CHUNK = 1 << 18  # values binned at a time (1 MB of float32, 2 MB of indices: in a core's L2 cache)
MIN_EXP = -24  # smallest range 2**-24: a constant (zero-range) tensor still gets a finite, non-zero scale


EXACT = 2**1100  # sums of squares are kept as integers in units of 2**-1100: every float64 is one


def _exact(v: float) -> int:
    num, den = float(v).as_integer_ratio()
    return num * (EXACT // den)


@dataclass
class Hist:
    """Counts of a tensor's values over [-2**exp, 2**exp], plus exact min, max and sum of squares.

    Every field merges exactly and in any order: counts are integers (a range doubling merges bin
    pairs exactly), min and max are order-free, and the sum of squares is an exact integer sum of
    each call's float64 sum (``exact``), rounded once. So statistics split over processes or cluster
    workers and merged give the same bytes as one process."""

    counts: np.ndarray  # int64 [2 * BINS]
    exp: int
    lo: float
    hi: float
    n: int
    sumsq: float
    exact: int | None = None  # the sum of squares in units of 2**-1100 (None: from ``sumsq``)

    def _exact_sumsq(self) -> int:
        return _exact(self.sumsq) if self.exact is None else self.exact

    def __getstate__(self) -> dict:
        """Pickled (cluster partials) with only the span of non-zero bins."""
        nz = np.flatnonzero(self.counts)
        first, last = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 0)
        state = dict(self.__dict__)
        state["counts"] = (first, self.counts[first:last].copy(), self.counts.size)
        return state

    def __setstate__(self, state: dict) -> None:
        first, span, size = state["counts"]
        counts = np.zeros(size, np.int64)
        counts[first : first + span.size] = span
        self.__dict__.update({**state, "counts": counts})

    @classmethod
    def empty(cls) -> Hist:
        return cls(np.zeros(2 * BINS, np.int64), MIN_EXP, np.inf, -np.inf, 0, 0.0, 0)

    @property
    def range(self) -> float:
        return float(2.0**self.exp)

    @property
    def width(self) -> float:
        return self.range / BINS

    def centers(self) -> np.ndarray:
        return (np.arange(2 * BINS, dtype=np.float64) + 0.5) * self.width - self.range

    def grow_to(self, exp: int) -> None:
        """Double the range (exp - self.exp) times, merging bin pairs each time."""
        while self.exp < exp:
            c = self.counts
            merged = c.reshape(-1, 2).sum(axis=1)  # BINS bins of double width over [-R, R]
            out = np.zeros_like(c)
            out[BINS // 2 : BINS // 2 + BINS] = merged
            self.counts = out
            self.exp += 1

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32).ravel()
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise FloatingPointError("non-finite values")
        amax = max(abs(lo), abs(hi))
        need = (
            MIN_EXP
            if amax == 0
            else max(MIN_EXP, int(np.ceil(np.log2(amax))) + (amax >= 2.0 ** np.ceil(np.log2(amax))))
        )
        self.grow_to(need)
        # x / width is exact in float32 (width is a power of two), so floor() bins exactly; the bin
        # offset and clip stay in float32 (whole numbers under 2**24 are exact there), then one cast
        # to the index type bincount takes. In chunks of CHUNK values through two small buffers (the
        # statistics' hot loop): a whole-tensor pass made a float32 and an int64 temporary, three
        # times the tensor (an SDXL attention's 671 MB scores took 2 GB more per folding thread), and
        # went through memory six times; chunks stay in the core's cache (2.5x faster binning,
        # the same counts).
        scale, chunk = np.float32(1.0 / self.width), min(CHUNK, x.size)
        t, idx = np.empty(chunk, np.float32), np.empty(chunk, np.intp)
        counts = np.zeros(2 * BINS, np.int64)
        for start in range(0, x.size, chunk):
            part = x[start : start + chunk]
            tt, ii = t[: part.size], idx[: part.size]
            np.multiply(part, scale, out=tt)
            np.floor(tt, out=tt)
            tt += np.float32(BINS)
            np.clip(tt, 0, 2 * BINS - 1, out=tt)
            np.copyto(ii, tt, casting="unsafe")
            counts += np.bincount(ii, minlength=2 * BINS)
        self.counts += counts
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        self.n += x.size
        self.exact = self._exact_sumsq() + _exact(float(np.einsum("i,i->", x, x, dtype=np.float64)))
        self.sumsq = self.exact / EXACT

    def merged(self, other: Hist) -> Hist:
        a, b = self.copy(), other.copy()
        e = max(a.exp, b.exp)
        a.grow_to(e)
        b.grow_to(e)
        exact = a._exact_sumsq() + b._exact_sumsq()
        return Hist(a.counts + b.counts, e, min(a.lo, b.lo), max(a.hi, b.hi), a.n + b.n, exact / EXACT, exact)

    def copy(self) -> Hist:
        return Hist(self.counts.copy(), self.exp, self.lo, self.hi, self.n, self.sumsq, self.exact)

    def folded(self) -> tuple[np.ndarray, float]:
        """Histogram of |x| (BINS bins over [0, R]) and its bin width."""
        return self.counts[BINS:] + self.counts[:BINS][::-1], self.width


def merge_all(hists: list[Hist]) -> Hist:
    out = Hist.empty()
    for h in hists:
        out = out.merged(h)
    return out


# -- range selection --------------------------------------------------------------------------
METHODS = ("minmax", "percentile", "mse", "entropy")
RANGE_CHOICES = (*METHODS, "auto")  # auto: a method per tensor class, measured (edgeq.quantize.range_choice)


def _qparams(rmin: float, rmax: float, symmetric: bool, bits: int = 8) -> tuple[float, float, int, int]:
    """(scale, zero_point, qmin, qmax) as ONNX Runtime computes them (zero always representable)."""
    rmin, rmax = min(rmin, 0.0), max(rmax, 0.0)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        a = max(abs(rmin), abs(rmax))
        return max(a / qmax, 1e-12), 0.0, -qmax, qmax
    qmax = 2**bits - 1
    scale = max((rmax - rmin) / qmax, 1e-12)
    return scale, float(np.round(-rmin / scale)), 0, qmax


def expected_mse(h: Hist, rmin: float, rmax: float, symmetric: bool, bits: int = 8) -> float:
    """Mean squared quantization error of the histogram's values for the range [rmin, rmax]."""
    scale, zp, qmin, qmax = _qparams(rmin, rmax, symmetric, bits)
    c = h.centers()
    q = np.clip(np.round(c / scale) + zp, qmin, qmax)
    err = (c - (q - zp) * scale) ** 2
    return float((h.counts * err).sum() / max(h.n, 1))


def select_range(
    h: Hist, method: str, symmetric: bool, percentile: float = 99.99, bits: int = 8
) -> tuple[float, float]:
    """The activation range [rmin, rmax] a method picks from a histogram."""
    if h.n == 0:
        raise ValueError("no data")
    lo, hi = h.lo, h.hi
    if symmetric:
        a = max(abs(lo), abs(hi))
        lo, hi = -a, a
    if method == "minmax":
        return lo, hi
    if method == "percentile":
        if symmetric:
            folded, w = h.folded()
            k = int(np.searchsorted(np.cumsum(folded), percentile / 100 * h.n))
            a = min((k + 1) * w, hi)
            return -a, a
        cum = np.cumsum(h.counts)
        tail = (100 - percentile) / 100 * h.n
        i_lo = int(np.searchsorted(cum, tail))
        i_hi = int(np.searchsorted(cum, h.n - tail))
        edges = np.arange(2 * BINS + 1) * h.width - h.range
        return max(lo, float(edges[i_lo])), min(hi, float(edges[min(i_hi + 1, 2 * BINS)]))
    if method == "mse":
        best, best_r = np.inf, (lo, hi)
        for alpha in np.linspace(0.05, 1.0, 96):
            r = (lo * alpha, hi * alpha)
            e = expected_mse(h, r[0], r[1], symmetric, bits)
            if e < best - 1e-18:
                best, best_r = e, r
        return best_r
    if method == "entropy":
        t = _entropy_threshold(h)
        return (-t, t) if symmetric else (max(lo, -t), min(hi, t))
    raise ValueError(f"unknown range method {method!r}; choose from {METHODS}")


def _smooth(p: np.ndarray, eps: float = 1e-4) -> np.ndarray | None:
    """Give empty bins a little mass taken from the others (as TensorRT and ORT do before KL)."""
    zero = p == 0
    nz = (~zero).sum()
    if nz == 0:
        return None
    p = p.astype(np.float64).copy()
    p[zero] = eps
    p[~zero] -= eps * zero.sum() / nz
    return p if (p > 0).all() else None


def _entropy_threshold(h: Hist, levels: int = 128) -> float:
    """TensorRT's KL-divergence calibration on the |x| histogram."""
    folded, w = h.folded()
    nz = np.nonzero(folded)[0]
    if nz.size == 0:
        return w
    last = int(nz[-1]) + 1
    if last <= levels:
        return last * w
    best_kl, best_i = np.inf, last
    for i in range(levels, last + 1, max(1, (last - levels) // 256)):
        sliced = folded[:i].astype(np.float64)
        p = sliced.copy()
        p[-1] += folded[i:].sum()  # outliers clipped into the last bin
        mask = p > 0
        q = np.zeros(i)
        for ch in np.array_split(np.arange(i), levels):
            k = mask[ch].sum()
            if k:
                q[ch[mask[ch]]] = sliced[ch].sum() / k
        ps, qs = _smooth(p), _smooth(q)
        if ps is None or qs is None:
            continue
        ps, qs = ps / ps.sum(), qs / qs.sum()
        kl = float((ps * np.log(ps / qs)).sum())
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i * w


def select_shared_range(
    group_hists: list[Hist], weights: list[float], method: str, symmetric: bool, bits: int = 8
) -> tuple[float, float]:
    """One range for all groups, minimising the step-weighted relative quantization error.

    Objective: sum_g w_g * MSE_g(range) / power_g, the expected noise-to-signal ratio, so groups
    with small activations are not drowned by groups with large ones. Candidates: each group's own
    choice by ``method`` and the merged histogram's range scaled by 0.05..1.
    """
    merged = merge_all(group_hists)
    cands = [select_range(h, method, symmetric, bits=bits) for h in group_hists if h.n]
    lo, hi = merged.lo, merged.hi
    if symmetric:
        a = max(abs(lo), abs(hi))
        lo, hi = -a, a
    cands += [(lo * a, hi * a) for a in np.linspace(0.05, 1.0, 48)]
    powers = [max(h.sumsq / max(h.n, 1), 1e-30) for h in group_hists]

    def objective(r: tuple[float, float]) -> float:
        return sum(
            w * expected_mse(h, r[0], r[1], symmetric, bits) / p for h, w, p in zip(group_hists, weights, powers) if h.n
        )

    return min(cands, key=objective)
