#!/usr/bin/env python
"""Which OpenVINO flavour is fastest on the SD1.5-shaped UNet (issue 18, part 2), and where its time goes.

Each flavour is the ``openvino`` profile's UNet policy (for this machine's CPU family) with a few
settings changed (``FLAVOURS``). All flavours share one set of edgeq statistics on ``--calib``
random calls (collected once for every tensor any flavour needs) and are quantized by edgeq's own
stages (cached under ``build/sd15-unet-bench/probe-<flavour>/``). Then, in ONE child process, one
compiled model at a time, every flavour and the FP32 graph (and NNCF's INT8 IR where
``tools/bench_peers.py`` made it) run with the f32 and the bf16 precision hint (bf16 only where the
CPU has it): median over ``--repeats`` calls after ``--warmup``, plus a per-layer profile of one
call (PERF_COUNT, summed by layer type and precision).

Accuracy is not measured here (random weights hide quantization damage): the flavour chosen goes
through ``tools/bench_peers.py``, which scores it on trained tiny-sd.

Writes ``benchmarks/openvino_speed_<cpu family>.{md,json}``.

    python tools/probe_openvino_speed.py [--calib 8] [--repeats 5] [--warmup 2] [--flavours ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_sd15_unet import WORK, RandomCalls, export_fp32, feeds, host_family, timed  # noqa: E402
from profile_openvino_unet import layer_times  # noqa: E402

FLAVOURS = {  # name: UNet policy settings changed from the openvino profile's
    "u8-asym": {"activation_type": "uint8", "activation_symmetric": False, "activation_matmul": "float"},
    "s8-sym": {"activation_type": "int8", "activation_symmetric": True, "activation_matmul": "float"},
    "u8-asym+attn": {"activation_type": "uint8", "activation_symmetric": False, "activation_matmul": "int8"},
    "s8-sym+attn": {"activation_type": "int8", "activation_symmetric": True, "activation_matmul": "int8"},
    "s8-sym+attn, probs float": {  # the softmax output into A.V float: Q/DQ on Q, K, V (NNCF's placement)
        "activation_type": "int8",
        "activation_symmetric": True,
        "activation_matmul": "int8",
        "attention_probs": "float",
    },
    "s8-sym+attn, inputs only": {  # NNCF's placement: no Q/DQ on the quantized ops' outputs
        "activation_type": "int8",
        "activation_symmetric": True,
        "activation_matmul": "int8",
        "output_quantization": False,
    },
}


def policy_of(settings: dict):
    from edgeq.profiles import load_profile

    return replace(load_profile("openvino").policy("unet").for_family(host_family()), **settings)


def quantized(fp32: Path, name: str, n_calib: int, log) -> Path:
    """The flavour's Q/DQ graph (cached), from the statistics every flavour shares."""
    import hashlib
    from dataclasses import asdict

    import onnx

    from edgeq.calibrate.collect import Stats
    from edgeq.calibrate.grouping import uniform
    from edgeq.quantize.insert import QDQ_VERSION
    from edgeq.quantize.policy import decide, tensors_to_calibrate
    from edgeq.stages.calibration import ComponentStats, collect_isolated
    from edgeq.stages.qdq import quantize_component
    from edgeq.stages.ranges import base_method, choose_ranges

    policy = policy_of(FLAVOURS[name])
    key = hashlib.sha256(json.dumps([QDQ_VERSION, n_calib, asdict(policy)], sort_keys=True, default=str).encode())
    dst = WORK / f"probe-{name.replace(', ', '-').replace(' ', '-')}" / "model.onnx"
    stamp = dst.parent / "policy.sha256"
    if dst.is_file() and stamp.is_file() and stamp.read_text() == key.hexdigest():
        return dst
    graph = onnx.load(str(fp32), load_external_data=False).graph
    every: list[str] = []
    for s in FLAVOURS.values():
        p = policy_of(s)
        every += [t for t in tensors_to_calibrate(graph, decide(graph, p), p) if t not in every]
    stats_path = WORK / f"stats-probe-speed-{n_calib}.npz"
    stats = Stats.load(stats_path) if stats_path.is_file() else None
    if stats is None or not set(every) <= set(stats.tensors):
        log(f"statistics of {len(every)} tensors on {n_calib} random calls")
        collect_isolated(fp32, every, RandomCalls.spread(n_calib), "unet", stats_path)
        stats = Stats.load(stats_path)
    decisions = tuple(decide(graph, policy))
    tensors = tuple(tensors_to_calibrate(graph, list(decisions), policy))
    cal = ComponentStats("unet", policy, decisions, tensors, stats, fp32)
    (ranges,), _ = choose_ranges(cal, uniform(list(stats.timesteps), 1), base_method(policy.range_method))
    t0 = time.time()
    tmp = dst.parent.with_name(dst.parent.name + ".tmp")
    quantize_component(fp32, decisions, policy, ranges, tmp / "model.onnx")
    if dst.parent.exists():
        import shutil

        shutil.rmtree(dst.parent)
    tmp.rename(dst.parent)
    stamp.write_text(key.hexdigest())
    log(f"{name}: quantized in {time.time() - t0:.0f} s ({sum(d.quantized for d in decisions)} nodes int8)")
    return dst


def _time_child(models_json: str, out: str, repeats: str, warmup: str) -> None:
    """Child process: every (model, hint) compiled and timed, one at a time, same inputs."""
    import gc

    import openvino as ov

    core = ov.Core()
    x = feeds(123, 500.0)
    results = {}
    for key, (path, hint) in json.loads(models_json).items():
        t0 = time.time()
        cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint, "PERF_COUNT": True}
        cm = core.compile_model(core.read_model(path), "CPU", cfg)
        req = cm.create_infer_request()
        load_s = time.time() - t0
        r = timed(req.infer, x, int(repeats), int(warmup))
        r["load_s"] = round(load_s, 1)
        r["layers"] = layer_times(req)
        results[key] = r
        print(key, f"{r['median_s']:.3f} s", flush=True)
        del req, cm
        gc.collect()
    Path(out).write_text(json.dumps(results))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--flavours", nargs="*", default=list(FLAVOURS), choices=list(FLAVOURS))
    ap.add_argument("--top", type=int, default=8, help="layer types listed per model")
    args = ap.parse_args()

    from edgeq.fsutil import write_json
    from edgeq.manifest import library_versions
    from edgeq.runtime.cpu import detect

    cpu = detect()
    hints = ["f32"] + (["bf16"] if {"avx512_bf16", "amx_bf16"} & set(cpu.flags) else [])
    fp32 = export_fp32()
    models = {"FP32": str(fp32)}
    nncf = WORK / "nncf-int8" / "model.xml"
    if nncf.is_file():
        models["NNCF INT8"] = str(nncf)
    for name in args.flavours:
        models[f"edgeq {name}"] = str(quantized(fp32, name, args.calib, print))
    runs = {f"{m} | {h}": (p, h) for m, p in models.items() for h in hints}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        code = "import sys; sys.path.insert(0, %r); import probe_openvino_speed as p; p._time_child(*sys.argv[1:])"
        cmd = [sys.executable, "-c", code % str(Path(__file__).parent), json.dumps(runs), str(out)]
        subprocess.run(cmd + [str(args.repeats), str(args.warmup)], check=True)
        res = json.loads(out.read_text())
    base = res["FP32 | f32"]["median_s"]
    lines = [
        f"OpenVINO flavours on the SD1.5-shaped UNet (random weights, batch 1, 64x64 latents), CPU {cpu.family} "
        f"({' '.join(cpu.flags)}), OpenVINO {library_versions().get('openvino')}: "
        f"`python tools/probe_openvino_speed.py --calib {args.calib} --repeats {args.repeats}`. "
        "One process, one model at a time, same input; PERF_COUNT on for every model.",
        "",
        "| model | hint | median s | min s | vs FP32 f32 hint | top layers (s, count) |",
        "|---|---|---|---|---|---|",
    ]
    for key, r in res.items():
        m, h = key.split(" | ")
        top = "; ".join(f"{k} {v[0]:.3f} ({v[1]})" for k, v in list(r["layers"].items())[: args.top])
        lines.append(f"| {m} | {h} | {r['median_s']:.3f} | {r['min_s']:.3f} | {base / r['median_s']:.2f}x | {top} |")
    text = "\n".join(lines) + "\n"
    stem = ROOT / "benchmarks" / f"openvino_speed_{cpu.family}"
    stem.with_suffix(".md").write_text(text)
    write_json(
        stem.with_suffix(".json"),
        {
            "cpu": {"family": cpu.family, "flags": list(cpu.flags)},
            "versions": library_versions(),
            "flavours": {k: FLAVOURS[k] for k in args.flavours},
            "results": res,
        },
    )
    print(text)


if __name__ == "__main__":
    main()
