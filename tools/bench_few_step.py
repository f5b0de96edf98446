#!/usr/bin/env python
"""Few-step INT8 on the yardstick: tiny-lcm at 1, 2 and 4 steps, FP32 against INT8, per target.

For each target (ort-cpu, openvino) and step count it builds tiny-lcm calibrated at that step count
with one timestep group per step, once per group mode (shared range, per-step graphs, per-step
gains; at 1 step only the shared range exists), and reads from each build's checks:

- per-step UNet SQNR of every variant on the held-out prompts, and what per-step scales gain over
  one shared range (worst step and mean);
- end to end against FP32 from the same seeds: PSNR, SSIM, adherence (INT8 and FP32).

Then the time per image of the whole pipeline (text encoder + UNet calls + VAE decoder) on each
runtime, medians of interleaved rounds after a warm-up: tiny-sd FP32 at 20 steps (its default
DDIM, classifier-free guidance), tiny-lcm FP32 and the deployed INT8 builds at 1, 2 and 4 steps.
FP32 runs on the same runtime as the INT8 build (OpenVINO with an explicit f32 hint).

    python tools/bench_few_step.py

Writes benchmarks/few_step_tiny-lcm_<cpu family>.{md,json}; builds go to build/few-step/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeq.runtime.cpu import detect  # noqa: E402
from edgeq.verify.report import grouping_gain  # noqa: E402

PROMPT = "a large red circle in the center on a blue background"


def modes_for(steps: int) -> list[str]:
    return ["shared"] if steps == 1 else ["shared", "per-group", "gains"]


def run_builds(args, log) -> dict:
    from edgeq.build import build
    from edgeq.stages.config import BuildOptions

    out: dict = {}
    for target in args.targets:
        for n in args.steps:
            for mode in modes_for(n):
                name = f"tiny-lcm-{target}-{n}step-{mode}"
                folder = args.out / name
                log(f"== build {name}")
                t0 = time.time()
                res = build(
                    BuildOptions(
                        model="tiny-lcm",
                        target=target,
                        steps=n,
                        groups=n,
                        group_mode=mode,
                        out=folder,
                        num_calib=args.num_calib,
                        num_heldout=args.num_heldout,
                    ),
                    log=lambda *a: None,
                )
                rep = res.report
                out[name] = {
                    "target": target,
                    "steps": n,
                    "mode": mode,
                    "folder": str(folder),
                    "passed": rep.passed,
                    "variants": rep.variants,
                    "e2e": rep.e2e,
                    "build_s": round(time.time() - t0, 1),
                    "failed_gates": rep.failed_gates(),
                }
                worst = min(r["sqnr_db"] for r in rep.variants[mode])
                log(
                    f"   {'passed' if rep.passed else 'FAILED'} worst step {worst:.2f} dB, e2e {rep.e2e['psnr_db']:.2f} dB"
                )
    return out


def fp32_pipeline(folder: Path, runtime: str):
    """An FP32 export run by ``runtime``: ONNX Runtime as exported, or OpenVINO (f32 hint) on the ONNX."""
    from edgeq.runtime.pipeline import Pipeline

    pipe = Pipeline(folder)
    if runtime == "openvino":
        from edgeq.targets.openvino import OpenVinoRunner

        for name in list(pipe.runners):
            path = folder / pipe.manifest["components"][name]["path"]
            pipe.runners[name] = OpenVinoRunner(path, inference_precision="f32", cache=False)
    return pipe


def int8_pipeline(folder: Path):
    from edgeq.manifest import read_manifest
    from edgeq.runtime.pipeline import Pipeline
    from edgeq.targets import for_manifest

    return Pipeline(folder, runners=for_manifest(read_manifest(folder)).runners())


def latency(args, builds: dict, log) -> dict:
    """Seconds per image, median of interleaved rounds, per runtime."""
    from edgeq.frontend.export import export
    from edgeq.manifest import read_manifest
    from edgeq.models.weights import resolve
    from edgeq.runtime.pipeline import GenerateOptions

    sd_fp32 = export(resolve("tiny-sd"), args.out / "tiny-sd-fp32", log=lambda *a: None).folder
    results: dict = {}
    for target in args.targets:
        runtime = "openvino" if target == "openvino" else "onnxruntime"
        cases: dict = {"tiny-sd FP32, 20 steps": (fp32_pipeline(sd_fp32, runtime), {})}
        lcm_src = None
        for b in builds.values():
            if b["target"] != target:
                continue
            lcm_src = lcm_src or Path(read_manifest(Path(b["folder"]))["source_export"]["folder"])
            label = f"tiny-lcm INT8 {b['mode']}, {b['steps']} step{'s' * (b['steps'] > 1)}"
            cases[label] = (int8_pipeline(Path(b["folder"])), {"steps": b["steps"]})
        assert lcm_src is not None
        lcm = fp32_pipeline(lcm_src, runtime)
        for n in args.steps:
            cases[f"tiny-lcm FP32, {n} step{'s' * (n > 1)}"] = (lcm, {"steps": n})
        times: dict[str, list[float]] = {k: [] for k in cases}
        for pipe, kw in cases.values():  # warm-up
            pipe.generate(GenerateOptions(prompt=PROMPT, seed=0, **kw))
        for r in range(args.repeats):
            for k, (pipe, kw) in cases.items():
                t0 = time.perf_counter()
                pipe.generate(GenerateOptions(prompt=PROMPT, seed=r, **kw))
                times[k].append(time.perf_counter() - t0)
        base = float(np.median(times["tiny-sd FP32, 20 steps"]))
        results[target] = {
            k: {"median_s": float(np.median(v)), "vs_tiny_sd_20": base / float(np.median(v)), "runs": len(v)}
            for k, v in times.items()
        }
        for k, v in results[target].items():
            log(f"   {target} {k}: {v['median_s'] * 1000:.1f} ms ({v['vs_tiny_sd_20']:.1f}x tiny-sd 20 steps)")
    return results


def range_spread(builds: dict) -> dict:
    """How far apart the steps' activation ranges are, per step count: for every calibrated UNet tensor,
    log2 of its largest |max| over the steps minus log2 of its smallest (bits), from the builds' statistics.
    Per-step scales can only gain where this is large."""
    from edgeq.calibrate.collect import Stats
    from edgeq.manifest import read_manifest

    out: dict = {}
    for b in builds.values():
        n = b["steps"]
        if n in out or n == 1:
            continue
        cache = Path(read_manifest(Path(b["folder"]))["cache_dir"])
        for f in sorted(cache.glob("stats-unet-*.npz")):
            st = Stats.load(f)
            if len(st.timesteps) == n:
                d = st.absmax_profile()
                d = d.max(0) - d.min(0)
                out[n] = {
                    "timesteps": [float(t) for t in st.timesteps],
                    "tensors": int(d.size),
                    "median_bits": float(np.median(d)),
                    "p90_bits": float(np.percentile(d, 90)),
                    "max_bits": float(d.max()),
                }
                break
    return out


def markdown(res: dict) -> str:
    cpu = res["cpu"]
    lines = [
        "# Few-step INT8: tiny-lcm at 1, 2 and 4 steps",
        "",
        f"CPU: {cpu['model']} ({cpu['cores']} cores), flags `{' '.join(cpu['flags']) or 'none'}`, "
        f"family `{cpu['family']}`. Command: `python tools/bench_few_step.py`. "
        f"Held-out prompts: {res['settings']['num_heldout']}; calibration prompts: {res['settings']['num_calib']}.",
        "",
        "## Per-step UNet SQNR (held-out calls), dB",
        "",
        "| target | steps | build | shared range | per-step graphs | per-step gains | "
        "per-step gain, worst step | e2e PSNR dB | SSIM | adherence INT8 (colour/shape/position) | FP32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(rows):
        return " / ".join(f"{r['sqnr_db']:.1f}" for r in rows) if rows else "-"

    def adh(a):
        return f"{a['colour']:.0f} / {a['shape']:.0f} / {a['position']:.0f}" if a else "-"

    for b in res["builds"].values():
        v = b["variants"]
        gain = grouping_gain(v)
        g = max((x["worst_db"] for x in gain.values()), default=None)
        e = b["e2e"]
        lines.append(
            f"| {b['target']} | {b['steps']} | {b['mode']}{'' if b['passed'] else ' (gate failed)'} | "
            f"{fmt(v.get('shared'))} | {fmt(v.get('per-group'))} | {fmt(v.get('gains'))} | "
            f"{'-' if g is None else f'{g:+.2f}'} | {e['psnr_db']:.2f} | {e['ssim']:.4f} | "
            f"{adh(e.get('adherence'))} | {adh(e.get('adherence_fp32'))} |"
        )
    lines += [
        "",
        "Each SQNR cell lists the steps in order (t = 999 first). The variant columns come from every build's",
        "own check of all variants; the e2e columns are the deployed variant's (the build's mode).",
        "",
        "## How far apart the steps' activation ranges are",
        "",
        "Per calibrated UNet tensor, log2 of its largest |max| over the steps minus log2 of its smallest",
        "(calibration statistics): per-step scales can only gain where the steps' ranges differ.",
        "",
        "| steps | timesteps | tensors | median bits | p90 bits | max bits |",
        "|---|---|---|---|---|---|",
    ]
    for n, r in sorted(res.get("range_spread", {}).items()):
        lines.append(
            f"| {n} | {', '.join(f'{t:.0f}' for t in r['timesteps'])} | {r['tensors']} | {r['median_bits']:.2f} | "
            f"{r['p90_bits']:.2f} | {r['max_bits']:.2f} |"
        )
    lines += [
        "",
        "## Time per image (text encoder + UNet calls + VAE decoder), median of interleaved rounds",
        "",
        "| runtime | pipeline | ms per image | vs tiny-sd FP32 20 steps |",
        "|---|---|---|---|",
    ]
    for target, rows in res["latency"].items():
        for k, v in rows.items():
            lines.append(f"| {target} | {k} | {v['median_s'] * 1000:.1f} | {v['vs_tiny_sd_20']:.1f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--targets", nargs="+", default=["ort-cpu", "openvino"])
    ap.add_argument("--num-calib", type=int, default=32)
    ap.add_argument("--num-heldout", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "few-step")
    ap.add_argument(
        "--report-only", action="store_true", help="re-read the saved JSON and its builds' statistics; no builds"
    )
    args = ap.parse_args()

    def log(msg: str) -> None:
        print(msg, flush=True)

    cpu = detect()
    stem = ROOT / "benchmarks" / f"few_step_tiny-lcm_{cpu.family}"
    if args.report_only:
        res = json.loads(stem.with_suffix(".json").read_text())
        res["range_spread"] = {int(k): v for k, v in range_spread(res["builds"]).items()}
        stem.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
        stem.with_suffix(".md").write_text(markdown(res))
        print(markdown(res))
        return
    builds = run_builds(args, log)
    d = cpu.to_dict()
    res = {
        "cpu": {
            "model": d.get("model") or platform.processor(),
            "flags": d["flags"],
            "family": d["family"],
            "cores": os.cpu_count(),
        },
        "settings": {"num_calib": args.num_calib, "num_heldout": args.num_heldout, "repeats": args.repeats},
        "builds": builds,
        "latency": latency(args, builds, log),
        "range_spread": range_spread(builds),
    }
    stem.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    md = markdown(res)
    stem.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
