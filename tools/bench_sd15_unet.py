#!/usr/bin/env python
"""UNet latency on the full-size SD1.5-shaped UNet (SD1.5 config, random weights), in one run.

Batch 1, 64x64 latents, 77x768 text. The UNet is exported with edgeq's exporter (cached under
``build/sd15-unet-bench/``), then quantized by edgeq's own stages, as ``edgeq build`` runs them:
streaming statistics in a child process on random inputs spread over the timesteps (random weights:
speed only, not quality), ranges by each target profile's method, Q/DQ insertion with its policy
(and with ``--gains``, the group gains graph). Then, in one process:

* OpenVINO: FP32 graph with the f32 hint, FP32 graph with OpenVINO's default hint (bf16 where the
  CPU has it), edgeq's ``openvino`` INT8 graph (f32 hint for what stays float);
* ONNX Runtime (with ``--ort``): FP32 graph, edgeq's ``ort-cpu`` INT8 graph.

Median, min and max over repeated calls after a warm-up; ratios against the same run's float
baseline of the same runtime. Writes benchmarks/sd15_unet_latency.{md,json}.

    python tools/bench_sd15_unet.py [--repeats 5] [--calib 8] [--ort]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeq.manifest import library_versions  # noqa: E402

if TYPE_CHECKING:
    from edgeq.calibrate.collect import Stats
    from edgeq.stages.calibration import ComponentStats

WORK = ROOT / "build" / "sd15-unet-bench"


def peak_rss_gb() -> float:
    """Peak RSS of this process or of the largest child it waited for (edgeq's statistics run in one)."""
    own, child = (resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return max(own, child) / 2**20


def export_fp32() -> Path:
    dst = WORK / "fp32" / "unet" / "model.onnx"
    if dst.is_file():
        return dst
    import torch
    from diffusers import UNet2DConditionModel

    from edgeq.frontend.export import ExportSettings, export_graph
    from edgeq.models.presets import PRESETS

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768).eval()
    comp = PRESETS["sd15"].component("unet")
    axes = {"batch": 1, "image_batch": 1, "sequence": 77, "height": 64, "width": 64}
    tmp = WORK / "fp32.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    export_graph(SimpleNamespace(unet=unet), comp, {"unet": dict(unet.config)}, axes, tmp, ExportSettings(batch=1))
    del unet
    gc.collect()
    tmp.rename(WORK / "fp32")
    return dst


def feeds(seed: int, t: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "sample": rng.standard_normal((1, 4, 64, 64)).astype(np.float32),
        "timestep": np.array(t, np.float32),
        "encoder_hidden_states": rng.standard_normal((1, 77, 768)).astype(np.float32),
    }


@dataclass(frozen=True)
class RandomCalls:
    """Random UNet inputs where edgeq's statistics stage reads a captured trajectory
    (edgeq.calibrate.capture.Capture): call ``i`` is step ``i``, at ``timesteps[i]``."""

    timesteps: tuple[float, ...]

    @classmethod
    def spread(cls, n: int) -> RandomCalls:
        """``n`` calls, their timesteps spread evenly over 999..1."""
        return cls(tuple(np.linspace(999, 1, n).tolist()))

    def unet_samples(self, limit: int | None = None):
        from edgeq.calibrate.capture import Sample

        for i, t in enumerate(self.timesteps[:limit]):
            yield Sample(0, i, t, feeds(i, t))

    def __len__(self) -> int:
        return len(self.timesteps)


def unet_candidates(fp32: Path, target: str, float_nodes: tuple[str, ...] = (), weight_bits: int = 8) -> tuple:
    """``target``'s UNet policy, its decision per node (``float_nodes`` left float) and the tensors
    those decisions need statistics of, as edgeq's calibration stage decides them."""
    import onnx

    from edgeq.profiles import load_profile
    from edgeq.quantize.policy import decide, tensors_to_calibrate

    policy = replace(load_profile(target).policy("unet"), weight_bits=weight_bits).for_family(host_family())
    graph = onnx.load(str(fp32), load_external_data=False).graph
    decisions = decide(graph, policy)
    missing = set(float_nodes) - {d.node for d in decisions}
    if missing:
        raise SystemExit(f"--float: no such candidate node {sorted(missing)}")
    decisions = [replace(d, quantized=False, reason="--float") if d.node in float_nodes else d for d in decisions]
    return policy, tuple(decisions), tuple(tensors_to_calibrate(graph, decisions, policy))


def host_family() -> str:
    """This machine's int8 kernel family: a profile's ``by_family`` entry for it applies, as in a build."""
    from edgeq.runtime.cpu import detect

    return detect().family


def family_suffix(target: str) -> str:
    """``-<family>`` where the profile's UNet policy differs on this machine's family."""
    from edgeq.profiles import load_profile

    return f"-{host_family()}" if host_family() in load_profile(target).policy("unet").by_family else ""


def stats_file(target: str, n_calib: int) -> Path:
    return WORK / f"stats-{target}-{n_calib}.npz"


def cached_stats(target: str, n_calib: int, tensors) -> Stats | None:
    """The statistics an earlier run collected, where they cover ``tensors``."""
    from edgeq.calibrate.collect import Stats

    path = stats_file(target, n_calib)
    if not path.is_file():
        return None
    stats = Stats.load(path)
    return stats if set(tensors) <= set(stats.tensors) else None


def unet_stats(
    fp32: Path, target: str, n_calib: int, float_nodes: tuple[str, ...] = (), weight_bits: int = 8
) -> ComponentStats:
    """The UNet's candidates and statistics: edgeq's statistics stage (a child process,
    edgeq.stages.calibration.collect_isolated) on ``n_calib`` random calls, or an earlier run's."""
    from edgeq.calibrate.collect import Stats
    from edgeq.stages.calibration import ComponentStats, collect_isolated

    policy, decisions, tensors = unet_candidates(fp32, target, float_nodes, weight_bits)
    stats = cached_stats(target, n_calib, tensors)
    if stats is None:
        path = stats_file(target, n_calib)
        collect_isolated(fp32, list(tensors), RandomCalls.spread(n_calib), "unet", path)
        stats = Stats.load(path)
    return ComponentStats("unet", policy, decisions, tensors, stats, fp32)


def group_ranges(cal: ComponentStats, groups: int = 1) -> tuple[list, list[dict]]:
    """The calls in ``groups`` uniform timestep groups and each group's ranges, by the profile's
    method (``auto``: the fixed method it starts from): edgeq's range stage
    (edgeq.stages.ranges.choose_ranges). One group: one range per tensor over every call."""
    from edgeq.calibrate.grouping import uniform
    from edgeq.stages.ranges import base_method, choose_ranges

    gs = uniform(list(cal.stats.timesteps), groups)
    per_group, _ = choose_ranges(cal, gs, base_method(cal.policy.range_method))
    return gs, per_group


def quantize(
    fp32: Path, target: str, n_calib: int, log, float_nodes: tuple[str, ...] = (), weight_bits: int = 8
) -> tuple[Path, dict]:
    """edgeq's statistics, range and Q/DQ stages for ``target``'s UNet policy, on random inputs
    (``weight_bits`` 7: the weights of x86-novnni and portable builds)."""
    from edgeq.stages.qdq import quantize_component

    name = (
        f"int8-{target}"
        + ("-float-" + _key(float_nodes) if float_nodes else "")
        + ("-w7" if weight_bits == 7 else "")
        + family_suffix(target)
    )
    dst = WORK / name / "model.onnx"
    info_path = dst.parent / "info.json"
    if dst.is_file() and info_path.is_file():
        return dst, json.loads(info_path.read_text())
    t0 = time.time()
    cal = unet_stats(fp32, target, n_calib, float_nodes, weight_bits)
    stats_s = time.time() - t0
    _, (ranges,) = group_ranges(cal)
    t0 = time.time()
    tmp = dst.parent.with_name(dst.parent.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    quantize_component(fp32, cal.decisions, cal.policy, ranges, tmp / "model.onnx")
    gc.collect()
    info = {
        "statistics_s": round(stats_s, 1),
        "quantize_s": round(time.time() - t0, 1),
        "quantized_nodes": sum(d.quantized for d in cal.decisions),
        "float_nodes": sum(not d.quantized for d in cal.decisions),
        "activation_tensors": len(cal.tensors),
        "bytes": sum(p.stat().st_size for p in tmp.iterdir()),
    }
    (tmp / "info.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(dst.parent, ignore_errors=True)
    tmp.rename(dst.parent)
    log(f"{target}: {info}")
    return dst, info


def _key(nodes) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(sorted(nodes)).encode()).hexdigest()[:8]


def with_gains(
    fp32: Path, target: str, int8: Path, n_calib: int, float_nodes: tuple[str, ...] = (), groups: int = 4
) -> Path:
    """The INT8 graph with group gains: per-group ranges from the same statistics, the calls split
    into ``groups`` timestep groups, and edgeq's gains stage (edgeq.stages.qdq.write_gains_graph)."""
    import onnx

    from edgeq.stages.qdq import write_gains_graph

    dst = WORK / f"{int8.parent.name}-gains" / "model.onnx"
    if dst.is_file():
        return dst
    cal = unet_stats(fp32, target, n_calib, float_nodes)
    gs, per_group = group_ranges(cal, groups)
    model = onnx.load(str(int8), load_external_data=True)
    write_gains_graph(model, cal, per_group, [g.to_dict() for g in gs], dst.parent)
    return dst


def timed(fn, x, repeats: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn(x)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t0)
    return {"median_s": float(np.median(ts)), "min_s": float(np.min(ts)), "max_s": float(np.max(ts)), "calls": repeats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--calib", type=int, default=8, help="random calibration calls (speed only)")
    ap.add_argument("--ort", action="store_true", help="also ONNX Runtime FP32 vs edgeq ort-cpu")
    ap.add_argument("--only", nargs="*", default=[], help="OpenVINO variants to time (besides ov_f32); --ort off")
    ap.add_argument("--float", nargs="*", default=[], help="also INT8 graphs with these UNet nodes left float")
    ap.add_argument("--gains", action="store_true", help="also the INT8 graphs with group gains (one graph, 4 groups)")
    ap.add_argument(
        "--w7", action="store_true", help="also the INT8 graphs with 7-bit weights (x86-novnni and portable builds)"
    )
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    fp32 = export_fp32()
    prep = {"openvino": quantize(fp32, "openvino", args.calib, print)}
    if args.ort:
        prep["ort-cpu"] = quantize(fp32, "ort-cpu", args.calib, print)
    mixed = {t: quantize(fp32, t, args.calib, print, tuple(args.float))[0] for t in prep} if args.float else {}
    w7 = {t: quantize(fp32, t, args.calib, print, weight_bits=7)[0] for t in prep} if args.w7 else {}
    x = feeds(123, 500.0)
    results: dict[str, dict] = {}
    gained = {t: with_gains(fp32, t, p[0], args.calib) for t, p in prep.items()} if args.gains else {}
    floated = tuple(args.float)
    gained_mixed = {t: with_gains(fp32, t, p, args.calib, floated) for t, p in mixed.items()} if args.gains else {}

    def gain_feed(path: Path) -> dict[str, np.ndarray]:
        table = json.loads((path.parent / "gains.json").read_text())["table"]
        return {**x, "edgeq_gains": np.asarray(table[1], np.float32)}

    import openvino as ov

    core = ov.Core()
    ov_variants = {
        "ov_f32": (fp32, {"INFERENCE_PRECISION_HINT": "f32"}),
        "ov_default": (fp32, {}),
        "edgeq_openvino": (prep["openvino"][0], {"INFERENCE_PRECISION_HINT": "f32"}),
    }
    if mixed:
        ov_variants["edgeq_openvino_float_nodes"] = (mixed["openvino"], {"INFERENCE_PRECISION_HINT": "f32"})
    if w7:
        ov_variants["edgeq_openvino_w7"] = (w7["openvino"], {"INFERENCE_PRECISION_HINT": "f32"})
    if gained:
        ov_variants["edgeq_openvino_gains"] = (gained["openvino"], {"INFERENCE_PRECISION_HINT": "f32"})
    if gained_mixed:
        ov_variants["edgeq_openvino_float_nodes_gains"] = (
            gained_mixed["openvino"],
            {"INFERENCE_PRECISION_HINT": "f32"},
        )
    if args.only:
        ov_variants = {k: v for k, v in ov_variants.items() if k == "ov_f32" or k in args.only}
    for name, (path, cfg) in ov_variants.items():
        t0 = time.time()
        compiled = core.compile_model(core.read_model(str(path)), "CPU", {"PERFORMANCE_HINT": "LATENCY", **cfg})
        load_s = time.time() - t0
        xf = gain_feed(path) if name.endswith("_gains") else x
        r = timed(lambda f, c=compiled: c(f), xf, args.repeats, args.warmup)
        r.update(
            precision_hint=compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(), load_s=round(load_s, 1)
        )
        results[name] = r
        print(name, r, flush=True)
        del compiled
        gc.collect()
    if args.ort and not args.only:
        from edgeq.runtime.sessions import OrtRunner

        ort_variants = [("ort_fp32", fp32), ("edgeq_ort_cpu", prep["ort-cpu"][0])]
        ort_variants += [("edgeq_ort_cpu_gains", gained["ort-cpu"])] if gained else []
        ort_variants += [("edgeq_ort_cpu_float_nodes", mixed["ort-cpu"])] if mixed else []
        ort_variants += [("edgeq_ort_cpu_w7", w7["ort-cpu"])] if w7 else []
        for name, path in ort_variants:
            t0 = time.time()
            runner = OrtRunner(path)
            load_s = time.time() - t0
            r = timed(runner.run, gain_feed(path) if name.endswith("_gains") else x, args.repeats, args.warmup)
            r.update(load_s=round(load_s, 1))
            results[name] = r
            print(name, r, flush=True)
            del runner
            gc.collect()
    from edgeq.runtime.cpu import detect

    cpu = detect()
    base = {"ov": results["ov_f32"]["median_s"], "ort": results.get("ort_fp32", {}).get("median_s")}
    lines = [
        f"SD1.5-shaped UNet (random weights), batch 1, 64x64 latents, 77x768 text; {args.repeats} calls after "
        f"{args.warmup} warm-up; {platform.machine()}, {__import__('os').cpu_count()} cores; CPU {cpu.describe()}",
        "",
        "| variant | runtime | precision hint | median s | min s | max s | speed vs float (same runtime) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        rt = "ort" if name.startswith(("ort_", "edgeq_ort")) else "ov"
        lines.append(
            f"| {name} | {'ONNX Runtime' if rt == 'ort' else 'OpenVINO'} | {r.get('precision_hint', '-')} | "
            f"{r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} | {base[rt] / r['median_s']:.2f}x |"
        )
    md = "\n".join(lines) + "\n"
    print(md)
    out = {
        "machine": platform.processor() or platform.machine(),
        "versions": library_versions(),
        "settings": vars(args),
        "cpu": cpu.to_dict(),
        "unet_sd15_shape": results,
        "quantization": {k: v[1] for k, v in prep.items()},
        "peak_rss_gb": round(peak_rss_gb(), 2),
    }
    dest = ROOT / "benchmarks"
    stem = "sd15_unet_latency_gains" if args.gains or args.float else "sd15_unet_latency"
    stem += "_w7" if args.w7 else ""
    (dest / f"{stem}.md").write_text(md)
    (dest / f"{stem}.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
