#!/usr/bin/env python
"""Issue 8's table on tiny-sd, in one run: the peers, edgeq without and with each quality feature, per target.

For each target (default ``ort-cpu``, ``openvino``, ``tensorrt`` simulated on the CPU) it runs full
``edgeq build``s of tiny-sd that differ only in the profile, each step adding one feature:

* ``base``: the target profile as shipped, without group gains (group mode auto: shared or per-group);
* ``+split``: shortcut splitting (``split_concat_convs = true``);
* ``+smooth``: SmoothQuant with alpha measured per model (``smoothquant = true``);
* ``+ranges``: range method per tensor class, measured (``range_method = "auto"``);
* ``+gains``: per-group scales in one graph (``--group-mode gains``);
* ``+mixed``: mixed precision to ``--goal`` dB worst-group SQNR (``goal_sqnr_db``).

Targets in ``--ladder`` get every step; the others get ``base`` and all features together.

Each row: worst and mean group UNet SQNR of the deployed graph on held-out prompts, end-to-end PSNR
and SSIM against FP32, tiny-sd adherence (and FP32's), UNet latency against the FP32 graph on the
same runtime (median of ``--repeats`` calls after a warm-up; ORT FP32 with all optimisations,
OpenVINO with the f32 hint), the share of the weight layers' MACs left float, the attention
MatMuls' precision, build time. The peers (ORT ``quantize_static`` defaults, NNCF's transformer
preset) are measured in the same run on the same capture and held-out prompts (their UNet only:
the VAE stays FP32 in their rows). Writes benchmarks/mixed_precision_tiny-sd.{md,json}.

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
sys.path.insert(0, str(ROOT / "tools"))

STEPS = ["base", "+split", "+smooth", "+ranges", "+gains", "+mixed"]


def profile_with(target: str, step: str, goal: float, dst: Path) -> tuple[Path, str | None]:
    """The target profile with the features up to ``step``; and the group mode to force (or None)."""
    upto = STEPS[: STEPS.index(step) + 1]
    unet = ""
    unet += "split_concat_convs = true\n" if "+split" in upto else ""
    unet += "smoothquant = true\n" if "+smooth" in upto else ""
    unet += f"goal_sqnr_db = {goal}\n" if "+mixed" in upto else ""
    unet += 'range_method = "auto"\n' if "+ranges" in upto else ""
    dst.write_text(
        f'name = "{target}"\nextends = "{target}"\n'
        f"[calibration]\ngroup_gains = {'true' if '+gains' in upto else 'false'}\n"
        + (f"[unet]\n{unet}" if unet else "")
    )
    return dst, ("gains" if "+gains" in upto else None)


def timed(run, feeds: dict, repeats: int, warmup: int = 3) -> float:
    """Median seconds of ``repeats`` calls after ``warmup`` (bench_sd15_unet's timer)."""
    from bench_sd15_unet import timed as timed_calls

    return timed_calls(run, feeds, repeats, warmup)["median_s"]


def unet_latency(out: Path, target: str, repeats: int) -> dict | None:
    """Median UNet call of the build and of its FP32 source on the same runtime (None: TensorRT,
    whose CPU simulation says nothing about engine speed)."""
    if target == "tensorrt":
        return None
    from edgeq.bench import feeds_for
    from edgeq.manifest import read_manifest
    from edgeq.runtime.pipeline import Pipeline
    from edgeq.runtime.sessions import OrtRunner
    from edgeq.targets import get_target

    m = read_manifest(out)
    x = feeds_for(m, m["components"]["unet"])
    t = get_target(target)
    unet = Pipeline(out, runners=t.runners()).runners["unet"]
    src = Path(m["source_export"]["folder"]) / "unet" / "model.onnx"
    fp32 = t.float_runner(src, m) or OrtRunner(src)  # the target's FP32 baseline; None: ONNX Runtime's
    f, q = timed(fp32.run, x, repeats), timed(unet.run, x, repeats)
    return {"fp32_ms": round(1000 * f, 2), "int8_ms": round(1000 * q, 2), "speedup": round(f / q, 3)}


def peer_latency(repeats: int) -> dict:
    """The peers' UNet latency against FP32 on their runtime (their graphs cached by :func:`peers`)."""
    from bench_peers import nncf_tiny, quantize_static_tiny

    from edgeq.runtime.sessions import OrtRunner
    from edgeq.stages.calibration import capture_set
    from edgeq.stages.config import BuildOptions
    from edgeq.stages.context import prepare
    from edgeq.targets.openvino import OpenVinoRunner

    ctx = prepare(BuildOptions("tiny-sd"))
    cal = capture_set(ctx, "calibration")
    fp32_path = ctx.export.path("unet")
    x = next(iter(cal.unet_samples(1))).feeds
    out = {}
    for name, q, f in (
        (
            "ort_quantize_static",
            lambda: OrtRunner(quantize_static_tiny(fp32_path, cal, ctx.cache)[0]),
            lambda: OrtRunner(fp32_path),
        ),
        (
            "nncf_int8",
            lambda: OpenVinoRunner(nncf_tiny(fp32_path, cal, ctx.cache)[0], inference_precision="f32", cache=False),
            lambda: OpenVinoRunner(fp32_path, inference_precision="f32", cache=False),
        ),
    ):
        f_s, q_s = timed(f().run, x, repeats), timed(q().run, x, repeats)
        out[name] = {"fp32_ms": round(1000 * f_s, 2), "int8_ms": round(1000 * q_s, 2), "speedup": round(f_s / q_s, 3)}
        print(name, out[name], flush=True)
    return out


def peers(num_heldout: int, repeats: int) -> dict:
    """ORT quantize_static defaults and NNCF's transformer preset on tiny-sd's calibration capture."""
    from bench_peers import nncf_tiny, quantize_static_tiny
    from compare_calibration import images, unet_quality

    from edgeq.runtime.pipeline import Pipeline
    from edgeq.runtime.sessions import OrtRunner
    from edgeq.stages.calibration import calibrate, capture_set
    from edgeq.stages.config import BuildOptions
    from edgeq.stages.context import prepare
    from edgeq.stages.ranges import make_groups
    from edgeq.targets.openvino import OpenVinoRunner

    ctx = prepare(BuildOptions("tiny-sd", num_heldout=num_heldout))
    cal, held = capture_set(ctx, "calibration"), capture_set(ctx, "heldout")
    fp32_path = ctx.export.path("unet")
    qs, _ = quantize_static_tiny(fp32_path, cal, ctx.cache)
    nncf, _ = nncf_tiny(fp32_path, cal, ctx.cache)
    fpipe = Pipeline(ctx.export.folder)
    ref = images(fpipe, list(held.settings.prompts))
    fp32 = OrtRunner(fp32_path)
    x = next(iter(held.unet_samples(1))).feeds
    groups = [g.to_dict() for g in make_groups(ctx, calibrate(ctx, cal)["unet"].stats)]
    out = {}
    for name, make, base in (
        ("ort_quantize_static", lambda: OrtRunner(qs), lambda: fp32),
        (
            "nncf_int8",
            lambda: OpenVinoRunner(nncf, inference_precision="f32", cache=False),
            lambda: OpenVinoRunner(fp32_path, inference_precision="f32", cache=False),
        ),
    ):
        r = make()
        q = unet_quality(fpipe, fp32, r, held, groups, ref, name)
        f_s, q_s = timed(base().run, x, repeats), timed(r.run, x, repeats)
        out[name] = {
            **q,
            "latency": {
                "fp32_ms": round(1000 * f_s, 2),
                "int8_ms": round(1000 * q_s, 2),
                "speedup": round(f_s / q_s, 3),
            },
        }
        print(name, json.dumps(out[name]), flush=True)
    return out


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
        "range_winners": (plan.get("range_choice") or {}).get("winners"),
        "variants_worst_db": {k: min(r["sqnr_db"] for r in v) for k, v in rep.variants.items()},
        "build_s": round(seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", nargs="+", default=["ort-cpu", "openvino", "tensorrt"])
    ap.add_argument("--ladder", nargs="*", default=["ort-cpu"], help="targets that get every step")
    ap.add_argument("--goal", type=float, default=32.0)
    ap.add_argument("--num-heldout", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=30, help="timed UNet calls per row (after 3 warm-up)")
    ap.add_argument(
        "--latency-only",
        action="store_true",
        help="re-measure only the latency column, on the builds of the last run (for a quiet machine)",
    )
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "mixed-precision")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "mixed_precision_tiny-sd")
    a = ap.parse_args()

    from edgeq.build import BuildOptions, build
    from edgeq.fsutil import write_json

    a.work.mkdir(parents=True, exist_ok=True)
    if a.latency_only:
        res = json.loads(a.out.with_suffix(".json").read_text())
        for target, variants in res["targets"].items():
            for name, r in variants.items():
                r["latency"] = unet_latency(a.work / f"tiny-sd-{target}{name}", target, a.repeats)
                print(target, name, r["latency"], flush=True)
        for name, lat in peer_latency(a.repeats).items():
            res["peers"][name]["latency"] = lat
        res["repeats"] = a.repeats
        res["latency_remeasured"] = True
        write_json(a.out.with_suffix(".json"), res)
        a.out.with_suffix(".md").write_text(markdown(res))
        print(markdown(res))
        return
    res: dict = {"goal_db": a.goal, "num_heldout": a.num_heldout, "repeats": a.repeats, "targets": {}}
    res["peers"] = peers(a.num_heldout, a.repeats)
    for target in a.targets:
        res["targets"][target] = {}
        names = STEPS if target in a.ladder else ["base", STEPS[-1]]
        for name in names:
            prof, mode = profile_with(target, name, a.goal, a.work / f"{target}{name}.toml")
            out = a.work / f"tiny-sd-{target}{name}"
            t0 = time.time()
            rep = build(
                BuildOptions(
                    "tiny-sd",
                    target=str(prof),
                    out=out,
                    num_heldout=a.num_heldout,
                    group_mode=mode,
                    onnx_only=target == "tensorrt",
                )
            ).report
            r = row(rep, out, time.time() - t0)
            r["latency"] = unet_latency(out, target, a.repeats)
            res["targets"][target][name] = r
            print(target, name, json.dumps(r), flush=True)
            write_json(a.out.with_suffix(".json"), res)
    write_json(a.out.with_suffix(".json"), res)
    a.out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))


def markdown(res: dict) -> str:
    lines = [
        f"# Quality features on tiny-sd (held-out prompts: {res['num_heldout']}, goal {res['goal_db']:g} dB)",
        "",
        "Each step adds one feature to the row above it. UNet latency: median of "
        f"{res.get('repeats', '?')} calls (CFG batch 2) against the FP32 graph on the same runtime, same run; "
        "tiny-sd's UNet runs in milliseconds, where per-op overhead outweighs INT8 arithmetic (the full-size "
        "figures are in sd15_unet_latency_gains.md). Peers: their UNet only (VAE FP32).",
        "",
        "| target | variant | group mode | worst / mean group SQNR dB | e2e PSNR dB | SSIM | adherence colour / shape "
        "(FP32) | UNet ms (FP32 ms) | speed vs FP32 | weight MACs float | attention MatMuls float | splits | "
        "SmoothQuant alpha | nodes floated | build s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def lat(r: dict) -> str:
        x = r.get("latency")
        return f"{x['int8_ms']:.1f} ({x['fp32_ms']:.1f}) | {x['speedup']:.2f}x" if x else "- | -"

    for name, p in res.get("peers", {}).items():
        lines.append(
            f"| (peer) | {name} | shared | {p['sqnr_worst_db']:.2f} / {p['sqnr_mean_db']:.2f} | {p['psnr_db']:.2f} "
            f"| {p['ssim']:.3f} | {p['adherence_colour']:.1f} / {p['adherence_shape']:.1f} | {lat(p)} "
            "| - | - | - | - | - | - |"
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
                f"| {target} | {name} | {r['group_mode']} | {r['sqnr_worst_db']:.2f} / {r['sqnr_mean_db']:.2f} | "
                f"{r['psnr_db']:.2f} | {r['ssim']:.3f} | {adh} | {lat(r)} | {100 * r['float_mac_share']:.2f}% | "
                f"{r['attention_matmuls_float']} of {r['attention_matmuls']} | {r['splits']} | "
                f"{r['smoothquant_alpha'] if r['smoothquant_alpha'] is not None else '-'} | "
                f"{len(r['mixed_float_nodes'])} | {r['build_s']:.0f} |"
            )
    lines += ["", "Worst group per UNet variant the checks measured (the deployed one is the group mode above):", ""]
    for target, variants in res["targets"].items():
        for name, r in variants.items():
            v = ", ".join(f"{k} {x:.2f}" for k, x in r.get("variants_worst_db", {}).items())
            lines.append(f"- {target} {name}: {v}")
    winners = next(
        (r["range_winners"] for v in res["targets"].values() for r in v.values() if r.get("range_winners")), None
    )
    if winners:
        lines += ["", "Range method chosen per tensor class (ort-cpu +ranges):", ""]
        lines += [f"- {c}: {m}" for c, m in winners.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
