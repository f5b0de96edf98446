#!/usr/bin/env python
"""Few steps at SD1.5 size: the UNet time of 20 classifier-free-guidance steps in FP32 against 4 few-step
(batch 1) steps in INT8, on OpenVINO and ONNX Runtime, calls interleaved on this CPU.

tiny-sd's UNet (8x8 latents) is too small to show it: its calls cost about the same at batch 1 and 2.
This uses the SD1.5-shaped UNet graphs of ``tools/bench_sd15_unet.py`` (random weights: speed only),
FP32 at batch 2 (CFG) and batch 1, edgeq's INT8 graph for this CPU family at batch 1.

    python tools/bench_steps_sd15_unet.py [--rounds 3]

Writes benchmarks/steps_sd15_unet_<cpu family>.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeq.runtime.cpu import detect  # noqa: E402

BENCH = ROOT / "build" / "sd15-unet-bench"


def feeds(b: int) -> dict:
    r = np.random.default_rng(0)
    return {
        "sample": r.standard_normal((b, 4, 64, 64)).astype(np.float32),
        "timestep": np.array(500.0, np.float32),
        "encoder_hidden_states": r.standard_normal((b, 77, 768)).astype(np.float32),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cpu = detect()
    fam = cpu.family
    fp32 = BENCH / "fp32" / "unet" / "model.onnx"
    graphs = {
        "openvino": BENCH / f"int8-openvino-{fam}" / "model.onnx",
        "onnxruntime": BENCH / "int8-ort-cpu" / "model.onnx",
    }
    for p in [fp32, *graphs.values()]:
        if not p.is_file():
            sys.exit(f"{p} is missing: run `python tools/bench_sd15_unet.py` first (it writes the SD1.5-shaped graphs)")
    import onnxruntime as ort
    import openvino as ov

    core = ov.Core()
    ov_cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}

    def ov_call(path: Path):
        req = core.compile_model(core.read_model(str(path)), "CPU", ov_cfg).create_infer_request()
        return req.infer

    def ort_call(path: Path):
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda f: s.run(None, f)

    results = {}
    for runtime, make in (("openvino", ov_call), ("onnxruntime", ort_call)):
        f32 = make(fp32)  # one session or compiled model for both batches (dynamic axes)
        cases = {"FP32 batch 2": (f32, 2), "FP32 batch 1": (f32, 1), "INT8 batch 1": (make(graphs[runtime]), 1)}
        for call, b in cases.values():
            call(feeds(b))  # warm-up
        t: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.rounds):
            for k, (call, b) in cases.items():
                f = feeds(b)
                t0 = time.perf_counter()
                call(f)
                t[k].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) for k, v in t.items()}
        med["20 CFG steps FP32 / 4 steps INT8"] = 20 * med["FP32 batch 2"] / (4 * med["INT8 batch 1"])
        results[runtime] = med
        del cases, f32
    lines = [
        "# SD1.5-shaped UNet: 20 CFG steps in FP32 against 4 few-step steps in INT8",
        "",
        f"CPU: {cpu.to_dict().get('model')} ({os.cpu_count()} cores), flags `{' '.join(cpu.flags) or 'none'}`, family "
        f"`{fam}`. Medians of {args.rounds} interleaved calls after a warm-up. Command: "
        "`python tools/bench_steps_sd15_unet.py`. UNet only (text encoder and VAE decoder not included).",
        "",
        "| runtime | FP32 batch 2 s | FP32 batch 1 s | INT8 batch 1 s | 20 x FP32 batch 2 / 4 x INT8 batch 1 |",
        "|---|---|---|---|---|",
    ]
    for rt, m in results.items():
        lines.append(
            f"| {rt} | {m['FP32 batch 2']:.2f} | {m['FP32 batch 1']:.2f} | {m['INT8 batch 1']:.2f} | "
            f"{m['20 CFG steps FP32 / 4 steps INT8']:.1f}x |"
        )
    md = "\n".join(lines) + "\n"
    stem = ROOT / "benchmarks" / f"steps_sd15_unet_{fam}"
    stem.with_suffix(".json").write_text(
        json.dumps({"cpu": cpu.to_dict(), "rounds": args.rounds, **results}, indent=2) + "\n"
    )
    stem.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
