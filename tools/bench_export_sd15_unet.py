#!/usr/bin/env python
"""Benchmark: export the full-size SD1.5-shaped UNet (SD1.5 config, random weights) to ONNX.

Prints export time, validation error against torch and peak memory, and saves them to
benchmarks/export_sd15_unet.json. Uses the same per-graph export code as `edgeq export`
(torch.onnx TorchScript exporter, opset 17, dynamic batch/height/width, one external data file).

    python tools/bench_export_sd15_unet.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeq.frontend.export import ExportSettings, export_graph  # noqa: E402
from edgeq.manifest import library_versions  # noqa: E402
from edgeq.models.presets import PRESETS  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, default=None, help="keep the exported folder here")
    args = ap.parse_args()
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    t0 = time.time()
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768).eval()  # the SD1.5 UNet config
    build_s = time.time() - t0
    params = sum(p.numel() for p in unet.parameters())
    spec = PRESETS["sd15"]
    comp = spec.component("unet")
    configs = {"unet": dict(unet.config)}
    axes = {"batch": 1, "image_batch": 1, "sequence": 77, "height": 64, "width": 64}
    out = args.keep or Path(tempfile.mkdtemp(prefix="edgeq-bench-"))
    rss_before = peak_rss_gb()
    t1 = time.time()
    entry, vals, files = export_graph(SimpleNamespace(unet=unet), comp, configs, axes, out, ExportSettings(batch=1))
    total_s = time.time() - t1
    sizes = {f: (out / f).stat().st_size for f in files}
    result = {
        "machine": platform.processor() or platform.machine(),
        "versions": library_versions(),
        "unet_parameters": params,
        "model_build_s": round(build_s, 1),
        "export_s": entry["export_seconds"],
        "export_and_validate_s": round(total_s, 1),
        "validation": [v.__dict__ for v in vals],
        "files": {k: round(v / 2**30, 3) for k, v in sizes.items()},
        "peak_rss_gb_before_export": round(rss_before, 2),
        "peak_rss_gb": round(peak_rss_gb(), 2),
    }
    print(f"SD1.5-shaped UNet: {params / 1e6:.1f} M parameters")
    print(f"| export (torch.onnx) | {result['export_s']:.1f} s |")
    print(f"| export + ORT validation | {result['export_and_validate_s']:.1f} s |")
    for v in vals:
        print(f"| validation {v.output} | max abs {v.max_abs:.2e}, rel {v.max_rel:.2e} (tol {v.tolerance:.0e}) |")
    print(f"| files | {', '.join(f'{k}: {v:.2f} GiB' for k, v in result['files'].items())} |")
    print(f"| peak RSS | {result['peak_rss_gb']:.1f} GB (model alone {rss_before:.1f} GB) |")
    dest = ROOT / "benchmarks" / "export_sd15_unet.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {dest}")
    if args.keep is None:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
