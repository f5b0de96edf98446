#!/usr/bin/env python
"""Where OpenVINO spends a UNet call: per-layer profiling (PERF_COUNT) of compiled models, summed by
layer type and execution precision. Compares edgeq's OpenVINO INT8 SD1.5-shaped UNet with others
(NNCF's, an FP32 graph) on the same random input; f32 hint for what stays float.

    python tools/profile_openvino_unet.py [MODEL ...]   # default: edgeq's and NNCF's SD1.5 UNets
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

from bench_sd15_unet import WORK, feeds  # noqa: E402


def profile(path: Path, top: int) -> str:
    import openvino as ov

    core = ov.Core()
    cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": True}
    req = core.compile_model(core.read_model(str(path)), "CPU", cfg).create_infer_request()
    x = feeds(123, 500.0)
    req.infer(x)  # warm-up
    req.infer(x)
    layers = layer_times(req)
    total = sum(v[0] for v in layers.values())
    lines = [f"== {path}: {total:.3f} s in layers", "| layer:precision | s | layers |", "|---|---|---|"]
    lines += [f"| {k} | {v[0]:.3f} | {v[1]} |" for k, v in list(layers.items())[:top]]
    return "\n".join(lines) + "\n"


def layer_times(req) -> dict[str, list]:
    """The last call's per-layer profile summed by layer type and execution precision: seconds and
    layer count, slowest first (the compiled model needs PERF_COUNT)."""
    secs: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for p in req.profiling_info:
        key = f"{p.node_type}:{p.exec_type.split('_')[-1] if p.exec_type else ''}"
        secs[key] += p.real_time.total_seconds()
        count[key] += 1
    return {k: [round(v, 4), count[k]] for k, v in secs.most_common()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", type=Path)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    models = args.models or [WORK / "int8-openvino" / "model.onnx", WORK / "nncf-int8" / "model.xml"]
    for m in models:
        if not m.is_file():
            sys.exit(f"{m} does not exist: run tools/bench_sd15_unet.py and tools/bench_peers.py first")
        print(profile(m, args.top))


if __name__ == "__main__":
    main()
