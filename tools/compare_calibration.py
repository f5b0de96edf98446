#!/usr/bin/env python
"""Calibration recipes compared on tiny-sd in one run: edgeq --groups 1, --groups 4 shared,
--groups 4 per-group, and ONNX Runtime's quantize_static defaults (QDQ, MinMax) fed the same
captured calibration inputs.

Only the UNet differs between rows (text encoder and VAE stay FP32), so the figures isolate the
UNet's quantization. UNet SQNR per timestep group is measured on held-out prompts and seeds (the 4
groups of the --groups 4 build, for every row); end-to-end PSNR/SSIM and adherence on the same
held-out prompts. Writes benchmarks/calibration_tiny_sd.{md,json}.

    python tools/compare_calibration.py [--num-calib 32] [--num-heldout 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeq.runtime.pipeline import GenerateOptions, Pipeline  # noqa: E402
from edgeq.runtime.sessions import GroupedRunner, OrtRunner  # noqa: E402
from edgeq.stages.calibration import calibrate, capture_set  # noqa: E402
from edgeq.stages.config import HELDOUT_SEED, BuildOptions  # noqa: E402
from edgeq.stages.context import prepare  # noqa: E402
from edgeq.stages.qdq import quantize_unet  # noqa: E402
from edgeq.verify.adherence import adherence  # noqa: E402
from edgeq.verify.checks import unet_groups  # noqa: E402
from edgeq.verify.metrics import psnr_db, ssim  # noqa: E402


def quantize_static_unet(fp32_path: Path, cap, out: Path) -> Path:
    """ORT's quantize_static with its defaults, calibrated on the same captured UNet inputs."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(cap.unet_samples())

        def get_next(self):
            s = next(self.it, None)
            return None if s is None else dict(s.feeds)

    quantize_static(str(fp32_path), str(out), Reader())
    return out


def images(fpipe, prompts: list[str]) -> list[np.ndarray]:
    """One image per held-out prompt, seeds as the build's checks use them."""
    return [fpipe.generate(GenerateOptions(prompt=p, seed=HELDOUT_SEED + i)) for i, p in enumerate(prompts)]


def unet_quality(fpipe, fp32, runner, held_cap, groups: list[dict], ref: list[np.ndarray], desc: str) -> dict:
    """UNet SQNR per timestep group, and the pipeline's images with ``runner`` as its UNet against ``ref``."""
    prompts = list(held_cap.settings.prompts)
    per = unet_groups(fp32, runner, held_cap, groups, desc=desc)
    fp32_unet, fpipe.runners["unet"] = fpipe.runners["unet"], runner
    try:
        imgs = images(fpipe, prompts)
    finally:
        fpipe.runners["unet"] = fp32_unet
    adh = adherence(prompts, imgs).to_dict()
    return {
        "sqnr_db_per_group": [round(r["sqnr_db"], 2) for r in per],
        "sqnr_worst_db": round(min(r["sqnr_db"] for r in per), 2),
        "sqnr_mean_db": round(float(np.mean([r["sqnr_db"] for r in per])), 2),
        "psnr_db": round(float(np.mean([min(psnr_db(a, b), 100) for a, b in zip(ref, imgs)])), 2),
        "ssim": round(float(np.mean([ssim(a, b) for a, b in zip(ref, imgs)])), 4),
        "adherence_colour": adh["colour"],
        "adherence_shape": adh["shape"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-calib", type=int, default=32)
    ap.add_argument("--num-heldout", type=int, default=64)
    ap.add_argument("--cache-dir", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.time()
    opts = BuildOptions(
        model="tiny-sd", num_calib=args.num_calib, num_heldout=args.num_heldout, cache_dir=args.cache_dir
    )
    ctx = prepare(opts)
    cal_cap, held_cap = capture_set(ctx, "calibration"), capture_set(ctx, "heldout")
    cal = calibrate(ctx, cal_cap)["unet"]
    fp32_path = ctx.export.path("unet")
    fp32 = OrtRunner(fp32_path)
    v4 = quantize_unet(replace(ctx, plan=replace(ctx.plan, groups=4)), cal, cal_cap)
    groups4 = [g.to_dict() for g in v4.groups]
    v1 = quantize_unet(replace(ctx, plan=replace(ctx.plan, groups=1)), cal, cal_cap)
    qs_path = quantize_static_unet(fp32_path, cal_cap, Path(tempfile.mkdtemp()) / "unet_qs.onnx")
    rows = {
        "edgeq --groups 1": OrtRunner(v1.shared_dir / "model.onnx"),
        "edgeq --groups 4 shared": OrtRunner(v4.shared_dir / "model.onnx"),
        "edgeq --groups 4 per-group": GroupedRunner(
            [(OrtRunner(v4.per_group_dir / f"model.g{i}.onnx"), g) for i, g in enumerate(groups4)]
        ),
        "ORT quantize_static defaults": OrtRunner(qs_path),
    }
    prompts = list(held_cap.settings.prompts)
    fpipe = Pipeline(ctx.export.folder)
    ref = images(fpipe, prompts)
    results = {name: unet_quality(fpipe, fp32, r, held_cap, groups4, ref, name) for name, r in rows.items()}
    fp32_adh = adherence(prompts, ref).to_dict()
    out = {
        "model": "tiny-sd",
        "num_calib": args.num_calib,
        "num_heldout": len(prompts),
        "groups": groups4,
        "adherence_fp32": fp32_adh,
        "results": results,
        "seconds": round(time.time() - t0, 1),
    }
    lines = [
        f"UNet W8A8 on tiny-sd, {len(prompts)} held-out prompts (FP32 adherence: colour {fp32_adh['colour']:.1f}%, "
        f"shape {fp32_adh['shape']:.1f}%); groups (t): "
        + ", ".join(f"{g['t_max']:.0f}-{g['t_min']:.0f}" for g in groups4),
        "",
        "| recipe | SQNR per group (dB) | worst | mean | e2e PSNR dB | SSIM | adherence colour / shape % |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {' / '.join(f'{v:.1f}' for v in r['sqnr_db_per_group'])} | {r['sqnr_worst_db']:.2f} | "
            f"{r['sqnr_mean_db']:.2f} | {r['psnr_db']:.2f} | {r['ssim']:.4f} | "
            f"{r['adherence_colour']:.1f} / {r['adherence_shape']:.1f} |"
        )
    md = "\n".join(lines) + "\n"
    print(md)
    dest = ROOT / "benchmarks"
    dest.mkdir(exist_ok=True)
    (dest / "calibration_tiny_sd.md").write_text(md)
    (dest / "calibration_tiny_sd.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
