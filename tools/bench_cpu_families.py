#!/usr/bin/env python
"""Accuracy per CPU int8 kernel family on trained tiny-sd: quantization error and kernel error.

Builds ``ort-cpu`` and ``openvino`` for tiny-sd with each ``--cpu`` flavour asked (default: the
host's family and ``portable``), all with one cache, then reads each build's report: per timestep
group the exact Q/DQ arithmetic against FP32, the deployed kernels against FP32 and the gap, on
this machine's family and on every family it can emulate (OpenVINO with oneDNN capped below VNNI);
end-to-end PSNR / SSIM / adherence on the held-out prompts; the float MAC share. Writes
``benchmarks/cpu_families_tiny-sd.{md,json}`` with the CPU's flags.

    python tools/bench_cpu_families.py [--cpu host portable] [--targets ort-cpu openvino] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeq.manifest import library_versions  # noqa: E402
from edgeq.runtime.cpu import detect  # noqa: E402


def build(target: str, cpu: str, out: Path, cache: Path, extra: list[str]) -> tuple[int, float]:
    cmd = [sys.executable, "-m", "edgeq", "build", "tiny-sd", "--target", target, "--cpu", cpu]
    cmd += ["--out", str(out), "--cache-dir", str(cache), *extra]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r.returncode, time.time() - t0


def rows(report: dict) -> list[dict]:
    """One row per (family run, group)."""
    fid = report["kernel_fidelity"]
    out = []
    runs = [fid["host"], *fid.get("emulated", {}).values()]
    deployed = {r["index"]: r["sqnr_db"] for r in report["unet_groups"]}
    for run in runs:
        for g in run["groups"]:
            out.append(
                {
                    "family": run["family"] + (" (emulated)" if run.get("emulated") else ""),
                    "group": g["index"],
                    "exact_db": g["exact_db"],
                    "deployed_db": g["deployed_db"],
                    "gap_db": g["gap_db"],
                    "heldout_deployed_db": deployed.get(g["index"]) if not run.get("emulated") else None,
                }
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", nargs="+", default=["host", "portable"])
    ap.add_argument("--targets", nargs="+", default=["ort-cpu", "openvino"])
    ap.add_argument("--cache", type=Path, default=ROOT / "build" / ".cache" / "cpu-families")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "cpu-families")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `edgeq build` options")
    args = ap.parse_args()
    cpu = detect()
    results = []
    for target in args.targets:
        for flavour in args.cpu:
            out = args.work / f"{target}-{flavour}"
            rc, secs = build(target, flavour, out, args.cache, args.extra)
            rep = json.loads((out / "report.json").read_text())
            e2e = rep["e2e"]
            res = {
                "target": target,
                "cpu": flavour,
                "family": rep["cpu"]["family"],
                "weight_bits": rep["cpu"]["weight_bits"],
                "passed": rc == 0,
                "build_s": round(secs, 1),
                "group_mode": rep["group_mode"],
                "worst_group_db": min(r["sqnr_db"] for r in rep["unet_groups"]),
                "psnr_db": e2e["psnr_db"],
                "ssim": e2e["ssim"],
                "adherence": e2e.get("adherence"),
                "adherence_fp32": e2e.get("adherence_fp32"),
                "float_share": rep["precision"].get("float_macs", {}).get("float_share"),
                "rows": rows(rep),
                "failed_gates": [g for g in rep["gates"] if not g["passed"]],
            }
            results.append(res)
            print(json.dumps({k: v for k, v in res.items() if k != "rows"}), flush=True)
    lines = [
        f"tiny-sd, held-out prompts as each build checks them; CPU: {cpu.describe()}; "
        f"onnxruntime {library_versions().get('onnxruntime')}, openvino {library_versions().get('openvino')}",
        "",
        "Builds:",
        "",
        "| target | --cpu | family | weight bits | passed | group mode | worst group dB (held-out) | e2e PSNR dB | SSIM | "
        "adherence colour / shape (FP32) | weight MACs float | build s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ad, af = r["adherence"] or {}, r["adherence_fp32"] or {}
        adh = f"{ad.get('colour', 0):.1f} / {ad.get('shape', 0):.1f} ({af.get('colour', 0):.1f} / {af.get('shape', 0):.1f})"
        share = f"{100 * r['float_share']:.2f}%" if r["float_share"] is not None else "-"
        lines.append(
            f"| {r['target']} | {r['cpu']} | {r['family']} | {r['weight_bits']} | {'yes' if r['passed'] else 'no'} | "
            f"{r['group_mode']} | {r['worst_group_db']:.2f} | {r['psnr_db']:.2f} | {r['ssim']:.3f} | {adh} | "
            f"{share} | {r['build_s']:.0f} |"
        )
    lines += [
        "",
        "Per timestep group, on the verification bundle's held-out calls: exact Q/DQ arithmetic (ONNX Runtime, "
        "graph optimisation off) vs FP32, the deployed kernels vs FP32, and the gap:",
        "",
        "| target | --cpu | kernels computed as | group | exact dB | deployed dB | gap dB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for row in r["rows"]:
            lines.append(
                f"| {r['target']} | {r['cpu']} | {row['family']} | {row['group']} | {row['exact_db']:.2f} | "
                f"{row['deployed_db']:.2f} | {row['gap_db']:.2f} |"
            )
    md = "\n".join(lines) + "\n"
    print(md)
    dest = ROOT / "benchmarks"
    (dest / "cpu_families_tiny-sd.md").write_text(md)
    payload = {"cpu": cpu.to_dict(), "versions": library_versions(), "settings": vars(args), "results": results}
    (dest / "cpu_families_tiny-sd.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
