#!/usr/bin/env python
"""UNet latency with OpenVINO on one machine, in one run: the FP32 graph with the f32 precision hint,
the FP32 graph with OpenVINO's default hint (bf16 on CPUs that have it), and edgeq's INT8 build.

Batch 2 (classifier-free guidance), the build's resolution, captured-like random inputs. Median,
min and max over repeated calls after a warm-up; ratios are against the f32 hint from the same run.
Writes benchmarks/openvino_unet_<model>.{md,json}.

    python tools/bench_openvino_unet.py build/tiny-sd-openvino [--repeats 50]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "tools"))

from bench_sd15_unet import timed  # noqa: E402

from edgeq.manifest import library_versions, read_manifest  # noqa: E402


def main() -> None:
    import openvino as ov

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("build", type=Path)
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    m = read_manifest(args.build)
    fp32 = Path(m["source_export"]["folder"]) / "unet" / "model.onnx"  # the FP32 export the build came from
    h, w = m["pipeline"]["resolution"]
    f = m["pipeline"]["vae_scale_factor"]
    cfg = json.loads((args.build / "unet" / "config.json").read_text())
    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((2, cfg["in_channels"], h // f, w // f)).astype(np.float32),
        "timestep": np.array(500.0, np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, cfg["cross_attention_dim"])).astype(np.float32),
    }
    core = ov.Core()
    unet = m["components"]["unet"]
    int8_path = args.build / (unet["graphs"][0]["path"] if "graphs" in unet else unet["path"])
    int8_feeds = dict(feeds)
    if "gains" in unet:  # a gains build: one graph, each call feeds its group's row of gains
        gains = json.loads((args.build / unet["gains"]).read_text())
        int8_feeds[gains["input"]] = np.asarray(gains["table"][0], np.float32)
    variants = {
        "ov_f32": core.compile_model(
            str(fp32), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        ),
        "ov_default": core.compile_model(str(fp32), "CPU", {"PERFORMANCE_HINT": "LATENCY"}),
        "edgeq_openvino": core.compile_model(
            str(int8_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        ),
    }
    results = {}
    for name, compiled in variants.items():
        x = int8_feeds if name == "edgeq_openvino" else feeds
        results[name] = timed(lambda x, c=compiled: c(x), x, args.repeats, warmup=5)
        results[name]["precision_hint"] = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    base = results["ov_f32"]["median_s"]
    lines = [
        f"UNet, {m['model']['name']}, batch 2, {h}x{w} px, {args.repeats} calls after warm-up, {platform.processor() or platform.machine()}",
        "",
        "| variant | precision hint | median ms | min ms | max ms | speed vs f32 hint |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['precision_hint']} | {r['median_s'] * 1e3:.2f} | {r['min_s'] * 1e3:.2f} | "
            f"{r['max_s'] * 1e3:.2f} | {base / r['median_s']:.2f}x |"
        )
    md = "\n".join(lines) + "\n"
    print(md)
    dest = ROOT / "benchmarks"
    dest.mkdir(exist_ok=True)
    stem = f"openvino_unet_{m['model']['name']}"
    (dest / f"{stem}.md").write_text(md)
    (dest / f"{stem}.json").write_text(
        json.dumps({"versions": library_versions(), "results": results}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
