#!/usr/bin/env python
"""Issue 8's table on tiny-sd, in one run: edgeq without and with each quality feature, per target.

For each target (default ``ort-cpu``, ``openvino``, ``tensorrt`` simulated on the CPU) it runs full
``edgeq build``s of tiny-sd that differ only in the UNet policy:

* ``base``: the target profile as shipped;
* ``+split``: shortcut splitting (``split_concat_convs = true``);
* ``+smooth``: and SmoothQuant with alpha measured per model (``smoothquant = true``);
* ``+mixed``: and mixed precision to ``--goal`` dB worst-group SQNR (``goal_sqnr_db``).

Targets in ``--ladder`` get every step; the others get ``base`` and all features together.

Each row: worst and mean group UNet SQNR of the deployed graph on held-out prompts, end-to-end PSNR
and SSIM against FP32, tiny-sd adherence (and FP32's), the share of the weight layers' MACs left
float, the attention MatMuls' precision, build time. The peers' rows (ORT ``quantize_static``
defaults, NNCF's transformer preset) are read from ``benchmarks/peers.json`` (tools/bench_peers.py,
same capture and held-out prompts). Writes benchmarks/mixed_precision_tiny-sd.{md,json}.

    python tools/bench_mixed_precision.py [--targets ort-cpu openvino tensorrt] [--goal 32]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "base": "",
    "+split": "split_concat_convs = true\n",
    "+split+smooth": "split_concat_convs = true\nsmoothquant = true\n",
    "+split+smooth+mixed": "split_concat_convs = true\nsmoothquant = true\ngoal_sqnr_db = {goal}\n",
}


def profile_with(target: str, extra: str, dst: Path) -> Path:
    text = (ROOT / "targets" / f"{target}.toml").read_text()
    head, sep, tail = text.partition("[unet]\n")
    dst.write_text(head + sep + extra + tail)
    return dst


def row(rep, out: Path, seconds: float) -> dict:
    plan = json.loads((out / "quant_plan.json").read_text())["unet"]
    f = plan["float_macs"]
    sq = [r["sqnr_db"] for r in rep.unet_groups]
    e = rep.e2e
    mp = plan.get("mixed_precision") or {}
    return {
        "passed": bool(rep.passed),
        "group_mode": rep.group_mode,
        "sqnr_worst_db": min(sq),
        "sqnr_mean_db": sum(sq) / len(sq),
        "sqnr_per_group_db": sq,
        "psnr_db": e["psnr_db"],
        "ssim": e["ssim"],
        "adherence": e.get("adherence"),
        "adherence_fp32": e.get("adherence_fp32"),
        "float_mac_share": f["float_share"],
        "attention_matmuls_float": f["attention_matmuls_float"],
        "attention_matmuls": f["attention_matmuls"],
        "splits": len(plan.get("splits", [])),
        "mixed_float_nodes": [x["node"] for x in mp.get("float_nodes", [])],
        "mixed_goal_met": mp.get("met"),
        "smoothquant_alpha": (plan.get("smoothquant") or {}).get("alpha"),
        "build_s": round(seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", nargs="+", default=["ort-cpu", "openvino", "tensorrt"])
    ap.add_argument("--ladder", nargs="*", default=["ort-cpu"], help="targets that get every step")
    ap.add_argument("--goal", type=float, default=32.0)
    ap.add_argument("--num-heldout", type=int, default=64)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "mixed-precision")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "mixed_precision_tiny-sd")
    a = ap.parse_args()

    from edgeq.build import BuildOptions, build
    from edgeq.fsutil import write_json

    a.work.mkdir(parents=True, exist_ok=True)
    res: dict = {"goal_db": a.goal, "num_heldout": a.num_heldout, "targets": {}}
    for target in a.targets:
        res["targets"][target] = {}
        names = list(VARIANTS) if target in a.ladder else ["base", list(VARIANTS)[-1]]
        for name in names:
            extra = VARIANTS[name]
            prof = profile_with(target, extra.format(goal=a.goal), a.work / f"{target}{name}.toml")
            out = a.work / f"tiny-sd-{target}{name}"
            t0 = time.time()
            rep, _ = build(
                BuildOptions(
                    "tiny-sd", target=str(prof), out=out, num_heldout=a.num_heldout, onnx_only=target == "tensorrt"
                )
            )
            res["targets"][target][name] = row(rep, out, time.time() - t0)
            print(target, name, json.dumps(res["targets"][target][name]), flush=True)
            write_json(a.out.with_suffix(".json"), res)
    peers = json.loads((ROOT / "benchmarks" / "peers.json").read_text()).get("quality_tiny_sd", {})
    res["peers"] = {k: v for k, v in peers.items() if k in ("ort_quantize_static", "nncf_int8")}
    write_json(a.out.with_suffix(".json"), res)
    a.out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))


def markdown(res: dict) -> str:
    lines = [
        f"# Quality features on tiny-sd (held-out prompts: {res['num_heldout']}, goal {res['goal_db']:g} dB)",
        "",
        "| target | variant | worst / mean group SQNR dB | e2e PSNR dB | SSIM | adherence colour / shape "
        "(FP32) | weight MACs float | attention MatMuls float | splits | SmoothQuant alpha | nodes floated | build s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in res.get("peers", {}).items():
        lines.append(
            f"| (peer) | {name} | {p['sqnr_worst_db']:.2f} / {p['sqnr_mean_db']:.2f} | {p['psnr_db']:.2f} "
            "| - | - | - | - | - | - | - | - |"
        )
    for target, variants in res["targets"].items():
        for name, r in variants.items():
            ad, af = r["adherence"] or {}, r["adherence_fp32"] or {}
            adh = (
                f"{ad.get('colour', 0):.1f} / {ad.get('shape', 0):.1f} ({af.get('colour', 0):.1f} / "
                f"{af.get('shape', 0):.1f})"
                if ad
                else "-"
            )
            lines.append(
                f"| {target} | {name} | {r['sqnr_worst_db']:.2f} / {r['sqnr_mean_db']:.2f} | {r['psnr_db']:.2f} | "
                f"{r['ssim']:.3f} | {adh} | {100 * r['float_mac_share']:.2f}% | "
                f"{r['attention_matmuls_float']} of {r['attention_matmuls']} | {r['splits']} | "
                f"{r['smoothquant_alpha'] if r['smoothquant_alpha'] is not None else '-'} | "
                f"{len(r['mixed_float_nodes'])} | {r['build_s']:.0f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
