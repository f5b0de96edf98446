#!/usr/bin/env python
"""How much faster OpenVINO's int8 kernels are than its bf16 and f32 ones on this CPU, layer by layer,
for the layer shapes that carry an SDXL UNet's compute at 512 px: the ceiling of a whole UNet's INT8
speed-up over its best float hint (no placement of Q/DQ can beat the kernels it lowers to).

Each case is a chain of identical layers (so the kernel dominates, not the call), built three ways:
float (compiled with the f32 and the bf16 hint) and Q/DQ (edgeq's x86-vnni flavour: unsigned
activations, symmetric per-channel int8 weights; compiled with the f32 hint, as edgeq deploys it).

    python tools/bench_ov_kernel_ceiling.py [--repeats 7] [--out benchmarks/openvino_kernel_ceiling_<family>]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (name, kind, tokens or spatial size, in channels, out channels, chain length): SDXL's UNet at 512 px
# (64x64 latents): attention levels at 32x32 (640 ch, 2 blocks per level) and 16x16 (1280 ch, 10);
# where in and out differ, the chain alternates the two directions
CASES = [
    ("linear 1280->1280, 256 tokens (attention projections, 16x16)", "linear", 256, 1280, 1280, 8),
    ("linear 1280->10240, 256 tokens and back (feed-forward in, 16x16)", "linear", 256, 1280, 10240, 4),
    ("linear 5120->1280, 256 tokens and back (feed-forward out, 16x16)", "linear", 256, 5120, 1280, 4),
    ("linear 640->640, 1024 tokens (attention projections, 32x32)", "linear", 1024, 640, 640, 8),
    ("conv3x3 1280->1280, 16x16", "conv", 16, 1280, 1280, 4),
    ("conv3x3 640->640, 32x32", "conv", 32, 640, 640, 4),
    ("conv3x3 320->320, 64x64", "conv", 64, 320, 320, 4),
]


def dims(kind: str, cin: int, cout: int, n: int) -> list[tuple[int, int]]:
    """Each layer's (in, out) channels: a chain of n, alternating cin->cout and cout->cin where they differ."""
    return [(cin, cout) if i % 2 == 0 else (cout, cin) for i in range(n)]


def graph(kind: str, size: int, cin: int, cout: int, n: int, qdq: bool, seed: int = 0):
    """A chain of ``n`` layers, every one float or every one Q/DQ."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x_shape = [1, size, cin] if kind == "linear" else [1, cin, size, size]
    cur = "x"
    for i, (a, b) in enumerate(dims(kind, cin, cout, n)):
        if kind == "linear":
            w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
            axis, red, shape = 1, 0, [1, -1]
        else:
            w = (rng.standard_normal((b, a, 3, 3)) / np.sqrt(a * 9)).astype(np.float32)
            axis, red, shape = 0, (1, 2, 3), [-1, 1, 1, 1]
        src = cur
        if qdq:
            scale = (np.abs(w).max(axis=red) / 127.0).astype(np.float32)
            q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
            inits += [
                numpy_helper.from_array(q, f"w{i}_q"),
                numpy_helper.from_array(scale, f"w{i}_s"),
                numpy_helper.from_array(np.zeros_like(scale, np.int8), f"w{i}_z"),
                numpy_helper.from_array(np.array(0.05, np.float32), f"a{i}_s"),
                numpy_helper.from_array(np.array(128, np.uint8), f"a{i}_z"),
            ]
            nodes += [
                helper.make_node("DequantizeLinear", [f"w{i}_q", f"w{i}_s", f"w{i}_z"], [f"w{i}"], axis=axis),
                helper.make_node("QuantizeLinear", [cur, f"a{i}_s", f"a{i}_z"], [f"q{i}"]),
                helper.make_node("DequantizeLinear", [f"q{i}", f"a{i}_s", f"a{i}_z"], [f"d{i}"]),
            ]
            src = f"d{i}"
        else:
            inits.append(numpy_helper.from_array(w, f"w{i}"))
        if kind == "linear":
            nodes.append(helper.make_node("MatMul", [src, f"w{i}"], [f"y{i}"]))
        else:
            nodes.append(helper.make_node("Conv", [src, f"w{i}"], [f"y{i}"], pads=[1, 1, 1, 1]))
        cur, ch = f"y{i}", b
    out_shape = [1, size, ch] if kind == "linear" else [1, ch, size, size]
    g = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(cur, TensorProto.FLOAT, out_shape)],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), x_shape


def macs(kind: str, size: int, cin: int, cout: int, n: int) -> float:
    positions = size if kind == "linear" else size * size * 9
    return sum(positions * a * b for a, b in dims(kind, cin, cout, n))


def timed(core, path: Path, hint: str, x: np.ndarray, repeats: int) -> float:
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})
    req = compiled.create_infer_request()
    req.infer({0: x})  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        req.infer({0: x})
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    import onnx
    import openvino as ov

    from edgeq.runtime import cpu as cpu_mod

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, help="write <out>.md and <out>.json")
    a = ap.parse_args()
    core = ov.Core()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kind, size, cin, cout, n in CASES:
            t = {}
            for qdq in (False, True):
                model, x_shape = graph(kind, size, cin, cout, n, qdq)
                path = Path(tmp) / f"{kind}{size}{cin}{cout}{int(qdq)}.onnx"
                onnx.save(model, str(path))
                x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
                if qdq:
                    t["int8"] = timed(core, path, "f32", x, a.repeats)
                else:
                    t["f32"] = timed(core, path, "f32", x, a.repeats)
                    t["bf16"] = timed(core, path, "bf16", x, a.repeats)
            g = macs(kind, size, cin, cout, n) / 1e9
            rows.append(
                {
                    "case": name,
                    "gmacs": round(g, 2),
                    **{f"{k}_ms": round(v * 1e3, 2) for k, v in t.items()},
                    **{f"{k}_gmacs_per_s": round(g / v, 1) for k, v in t.items()},
                    "int8_vs_f32": round(t["f32"] / t["int8"], 2),
                    "int8_vs_bf16": round(t["bf16"] / t["int8"], 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    cpu = cpu_mod.detect().describe()
    lines = [
        f"OpenVINO {ov.get_version()}, CPU {cpu}; medians of {a.repeats} calls after a warm-up, each case a chain "
        "of identical layers; int8: Q/DQ graph (u8 activations, symmetric per-channel s8 weights), f32 hint",
        "",
        "| layers | GMAC | f32 ms | bf16 ms | int8 ms | int8 vs f32 | int8 vs bf16 |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['case']} | {r['gmacs']} | {r['f32_ms']} | {r['bf16_ms']} | {r['int8_ms']} | {r['int8_vs_f32']}x "
        f"| {r['int8_vs_bf16']}x |"
        for r in rows
    ]
    print("\n".join(lines))
    if a.out:
        a.out.with_suffix(".md").write_text(
            "# OpenVINO int8 kernels against bf16 and f32, per layer shape\n\n" + "\n".join(lines) + "\n"
        )
        a.out.with_suffix(".json").write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
