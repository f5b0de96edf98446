#!/usr/bin/env python
"""One UNet call at batch 2 (the pipeline's classifier-free-guidance pair) against the same two items
run one after the other at batch 1, on the same session, alternating, in one process: median time
per call after a warm-up, and whether the outputs agree. Prints a table and, with ``--out``, writes it
as markdown. At SD1.5 size the pair at once streams the attention scores of both items through
memory (2 x 8 x 4096 x 4096 floats per self-attention at 512 px); one item at a time halves that.

    python tools/bench_batch_split.py GRAPH.onnx [GRAPH2.onnx ...] [--size 64] [--calls 5] [--out benchmarks/<name>.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def bench(path: str, size: int, calls: int) -> dict:
    import numpy as np

    from edgeq.runtime.cpu import detect
    from edgeq.runtime.sessions import OrtRunner, batch_items

    runner = OrtRunner(Path(path))
    runner.splits = False  # the pair at once; the split below is done here, item by item
    rng = np.random.default_rng(0)
    dims = {"batch": 2, "height": size, "width": size, "sequence": 77}
    feeds = {}
    for i in runner.session.get_inputs():
        shape = [d if isinstance(d, int) else dims.get(d, 2 if k == 0 else 77) for k, d in enumerate(i.shape)]
        feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    feeds["timestep"] = np.array(500.0, np.float32)
    items = batch_items(feeds)
    pair_t, split_t = [], []
    for k in range(calls + 1):
        t0 = time.perf_counter()
        whole = runner.run(feeds)["out_sample"]
        t1 = time.perf_counter()
        parts = np.concatenate([runner.run(it)["out_sample"] for it in items])
        t2 = time.perf_counter()
        if k:  # the first of each is the warm-up
            pair_t.append(t1 - t0)
            split_t.append(t2 - t1)
    diff = float(np.abs(whole - parts).max())
    return {
        "graph": path,
        "pair_s": round(statistics.median(pair_t), 2),
        "split_s": round(statistics.median(split_t), 2),
        "ratio": round(statistics.median(pair_t) / statistics.median(split_t), 3),
        "max_abs_diff": diff,
        "cpu": detect().to_dict(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("graphs", nargs="+")
    ap.add_argument("--size", type=int, default=64, help="latent height and width")
    ap.add_argument("--calls", type=int, default=5, help="timed calls of each kind after one warm-up")
    ap.add_argument("--out")
    a = ap.parse_args()
    rows = [bench(g, a.size, a.calls) for g in a.graphs]
    flags = " ".join(rows[0]["cpu"].get("flags", [])) if rows else ""
    lines = [
        f"UNet call at batch 2 against its two items at batch 1, {a.size}x{a.size} latents, medians of {a.calls} "
        f"after a warm-up, alternating in one process; CPU flags: {flags}",
        "",
        "| graph | pair at once s | one item at a time s | pair / split | max abs diff |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| `{r['graph']}` | {r['pair_s']} | {r['split_s']} | {r['ratio']}x | {r['max_abs_diff']:.2e} |" for r in rows
    ]
    print("\n".join(lines))
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
