#!/usr/bin/env python
"""ONNX Runtime's CPU arena growing by doubling chunks (its default) against the process's shared
arena growing by what is asked (:func:`edgeq.runtime.sessions.use_shared_arena`): per call, time and
peak RSS, for the UNet sessions a build runs at full size, each variant in its own process.

- ``capture``: the calibration capture's FP32 UNet (:class:`CaptureStats`: unoptimised, the target's
  calibrated tensors as extra outputs, folded into histograms; one batch item at a time)
- ``fp32``: the FP32 pipeline's UNet (:class:`OrtRunner`, optimised)
- ``int8``: a build's INT8 UNet (:class:`OrtRunner`, optimised), the first of its graphs

    python tools/bench_shared_arena.py build/.cache/<model>/fp32 --int8 build/<out>/unet/model.g0.onnx
           [--size 64] [--batch 2] [--calls 3] [--out benchmarks/<name>.md]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one(kind: str, path: str, shared: bool, size: int, batch: int, calls: int) -> dict:
    import numpy as np
    import onnx

    import edgeq.runtime.sessions as sessions
    from edgeq.stages.memory import PeakRss, tree_rss

    if not shared:
        sessions.use_shared_arena = lambda opts: None  # ONNX Runtime's default arena, per session
    elif kind != "capture":  # OrtRunner keeps its own arena in edgeq: give it the shared one here
        import onnxruntime as ort

        plain = ort.InferenceSession

        def with_shared(path, opts, **kw):
            sessions.use_shared_arena(opts)
            return plain(path, opts, **kw)

        ort.InferenceSession = with_shared
    if kind == "capture":
        from edgeq.calibrate.collect import CaptureStats, StatsRequest
        from edgeq.profiles import load_profile
        from edgeq.quantize.policy import decide, tensors_to_calibrate

        g = onnx.load(path, load_external_data=False).graph
        pol = load_profile("ort-cpu").policy("unet")
        tensors = tensors_to_calibrate(g, decide(g, pol), pol)
        runner = CaptureStats(StatsRequest(Path(path), tensors, {(0, s) for s in range(calls)}), calls)
        runner.begin(0)
    else:
        runner = sessions.OrtRunner(Path(path))
    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((batch, 4, size, size)).astype(np.float32),
        "timestep": np.array(500.0, np.float32),
        "encoder_hidden_states": rng.standard_normal((batch, 77, 768)).astype(np.float32),
    }
    times, peaks, after = [], [], []
    for _ in range(calls):
        t0 = time.perf_counter()
        with PeakRss(interval=0.05) as peak:
            runner.run(feeds)
        times.append(round(time.perf_counter() - t0, 1))
        peaks.append(peak.gb)
        after.append(round(tree_rss() / 2**30, 2))
    return {"kind": kind, "shared": shared, "calls_s": times, "peak_gb": peaks, "after_gb": after}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path, help="the FP32 export folder (its unet/model.onnx)")
    ap.add_argument("--int8", type=Path, help="an INT8 UNet graph to compare too")
    ap.add_argument("--size", type=int, default=64, help="latent height and width (64: 512 px)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--out", type=Path, help="also write the table here (markdown)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    fp32 = str(a.export / "unet" / "model.onnx")
    if a.child:
        kind, shared = a.child.split(":")
        path = str(a.int8) if kind == "int8" else fp32
        print(json.dumps(one(kind, path, shared == "1", a.size, a.batch, a.calls)))
        return
    rows = []
    for kind in ["capture", "fp32"] + (["int8"] if a.int8 else []):
        for shared in ("0", "1"):
            cmd = [sys.executable, __file__, str(a.export), "--size", str(a.size), "--batch", str(a.batch)]
            cmd += ["--calls", str(a.calls), "--child", f"{kind}:{shared}"]
            cmd += ["--int8", str(a.int8)] if a.int8 else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    from edgeq.runtime import cpu as cpu_mod

    lines = [
        f"UNet of `{a.export}`" + (f" and `{a.int8}`" if a.int8 else "") + f", {a.size}x{a.size} latents, "
        f"batch {a.batch}, {a.calls} calls per process; CPU {cpu_mod.detect().describe()}",
        "",
        "| session | arena | calls s | peak GB per call | GB after each call |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        arena = "shared, grows as asked" if r["shared"] else "per session, doubling"
        lines.append(
            f"| {r['kind']} | {arena} | {', '.join(map(str, r['calls_s']))} | {', '.join(map(str, r['peak_gb']))} "
            f"| {', '.join(map(str, r['after_gb']))} |"
        )
    print("\n".join(lines))
    if a.out:
        a.out.write_text("# The shared CPU arena against ONNX Runtime's default\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
