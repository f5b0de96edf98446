#!/usr/bin/env python
"""Folding one call's calibrated activations into their histograms: one thread against every core.

The statistics that run during the calibration capture (edgeq.calibrate.collect._fold) histogram
every calibrated tensor of every folded call while the runtime waits. Synthetic activations with
the SD1.5-shaped UNet's tensor sizes at 512 px (64x64 latents, one batch item, about 1.4 GB) are
folded with EDGEQ_THREADS=1 and with the default (every core), alternating, medians after a warm-up;
the counts must be the same bytes. Prints a table, saves benchmarks/fold_statistics_<family>.{md,json}.

    python tools/bench_fold.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    import numpy as np

    from edgeq.calibrate.collect import Stats, _fold
    from edgeq.calibrate.histogram import Hist
    from edgeq.runtime.cpu import detect

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    # activation sizes of the SD1.5 UNet's levels at 64x64 latents, attention scores included
    sizes = rng.choice([64 * 64 * 320, 32 * 32 * 640, 16 * 16 * 1280, 4096 * 4096 // 8, 77 * 768], 400)
    arrays = [rng.standard_normal(int(n), dtype=np.float32) * np.float32(rng.uniform(0.1, 10)) for n in sizes]
    names = [f"t{i}" for i in range(len(arrays))]
    gb = sum(a.nbytes for a in arrays) / 1e9

    def run(threads: str) -> tuple[float, str]:
        os.environ["EDGEQ_THREADS"] = threads
        st = Stats(names, [0.0], {n: [Hist.empty()] for n in names})
        t = time.perf_counter()
        _fold(st, names, arrays, 0)
        dt = time.perf_counter() - t
        h = hashlib.sha256()
        for n in names:
            h.update(st.hists[n][0].counts.tobytes())
            h.update(str(st.hists[n][0].exact).encode())
        return dt, h.hexdigest()

    cores = str(os.cpu_count() or 1)
    run("1"), run(cores)  # warm-up
    times: dict[str, list[float]] = {"1": [], cores: []}
    digests = set()
    for _ in range(args.repeats):
        for k in times:
            dt, d = run(k)
            times[k].append(dt)
            digests.add(d)
    med = {k: float(np.median(v)) for k, v in times.items()}
    cpu = detect()
    res = {
        "gb": round(gb, 3),
        "tensors": len(arrays),
        "cpu": cpu.to_dict(),
        "median_s": med,
        "speedup": med["1"] / med[cores],
        "same_counts": len(digests) == 1,
    }
    md = [
        f"# Folding {gb:.2f} GB of activations ({len(arrays)} tensors) into histograms",
        "",
        f"`python tools/bench_fold.py --repeats {args.repeats}`; CPU family {cpu.family}, flags "
        f"`{' '.join(cpu.flags)}`, {cores} cores; medians after a warm-up.",
        "",
        "| threads | median s |",
        "|---|---|",
        *(f"| {k} | {v:.2f} |" for k, v in med.items()),
        "",
        f"{res['speedup']:.2f}x with every core; the same counts: {res['same_counts']}.",
    ]
    print("\n".join(md))
    out = ROOT / "benchmarks" / f"fold_statistics_{cpu.family}"
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    if not res["same_counts"]:
        sys.exit("the counts differ between thread counts")


if __name__ == "__main__":
    main()
