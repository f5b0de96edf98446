#!/usr/bin/env python
"""Where OpenVINO spends a UNet call of a build: the build's INT8 UNet and its FP32 source graph, each
at the precision hints given, profiled per layer (PERF_COUNT) and summed by layer type and execution
precision. Each configuration runs in its own process (clean memory, one compiled model at a time);
call times are medians after a warm-up, PERF_COUNT on for every configuration alike.

    python tools/profile_openvino_build.py build/sdxl-ov-1024 --height 512 --width 512 --batch 1 \
        --configs int8:f32 int8:bf16 fp32:bf16 fp32:f32 --out benchmarks/openvino_profile_sdxl_512_x86-vnni
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # profile_openvino_unet beside it


def _feeds(build: Path, which: str, height: int, width: int, batch: int) -> tuple[Path, dict]:
    from edgeq.bench import feeds_for
    from edgeq.manifest import read_manifest

    manifest = read_manifest(build)
    manifest["pipeline"]["resolution"] = [height, width]
    folder = build if which != "fp32" else Path(manifest["source_export"]["folder"])
    info = read_manifest(folder)["components"]["unet"]
    if "path" not in info:
        sys.exit(f"{build}: a per-group build (one UNet graph per group); profile a shared or gains build")
    x = feeds_for(manifest, info)
    for k, v in x.items():  # the batch asked for, whatever the pipeline's guidance
        if k != "timestep" and v.ndim and v.shape[0] in (1, 2):
            x[k] = np.ascontiguousarray(np.broadcast_to(v[:1], (batch, *v.shape[1:])))
    path = folder / info["path"] if which in ("int8", "fp32") else Path(which)  # or a model file fed alike
    # a gains graph's table (group 0's row is fed): the build's, or the one beside a model file
    gains_file = folder / info["gains"] if which == "int8" and info.get("gains") else path.parent / "gains.json"
    if gains_file.is_file():
        gains = json.loads(gains_file.read_text())
        x[gains["input"]] = np.asarray(gains["table"], np.float32)[0]
    return path, x


def _compiled(core, path: Path, x: dict, cfg: dict, mmap: bool = True) -> tuple:
    """An infer request of ``path`` compiled from the file (no ov.Model kept beside it) and the feeds
    it takes. ``mmap=False`` reads the weights into memory instead of mapping the file."""
    core.set_property({"ENABLE_MMAP": mmap})
    compiled = core.compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY", **cfg})
    names = {n for i in compiled.inputs for n in i.get_names()}
    return compiled.create_infer_request(), {k: v for k, v in x.items() if k in names}


def child(build: Path, which: str, hint: str, height: int, width: int, batch: int, repeats: int) -> dict:
    import resource

    import openvino as ov
    from profile_openvino_unet import layer_times

    path, x = _feeds(build, which, height, width, batch)
    t0 = time.perf_counter()
    req, x = _compiled(ov.Core(), path, x, {"INFERENCE_PRECISION_HINT": hint, "PERF_COUNT": True})
    compile_s = time.perf_counter() - t0
    req.infer(x)  # warm-up
    ts = []
    for _ in range(repeats):
        t1 = time.perf_counter()
        req.infer(x)
        ts.append(time.perf_counter() - t1)
    return {
        "config": f"{which}:{hint}",
        "median_s": float(np.median(ts)),
        "calls_s": [round(t, 3) for t in ts],
        "compile_s": round(compile_s, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),  # this child's
        "layers": layer_times(req),  # the last call
    }


def interleaved(build: Path, configs: list[str], height: int, width: int, batch: int, rounds: int) -> list[dict]:
    """Every configuration compiled in one process (the first one first: it may be the largest), then
    ``rounds`` rounds calling each in turn after a warm-up round: medians of the same rounds, so that
    the machine's noise falls on all alike. No PERF_COUNT.

    Only the FP32 source is compiled from its mapped file; every other graph is read into memory
    (ENABLE_MMAP off). An SDXL-sized FP32 graph at the bf16 hint holds about 10 GB of its own plus
    10 GB of mapped file pages on a 24 GB machine: an INT8 graph beside it whose weights were mapped
    too had them evicted and read back during its calls (2.5-2.9 s instead of 2.2 s per call), which
    a deployment running it alone never sees. The FP32 graph at the bf16 hint runs from the copies it
    repacked: 3.85 s per call read into memory alone, 3.86 s mapped beside the INT8 graph. What each
    configuration holds is printed."""
    import gc

    import openvino as ov

    core = ov.Core()
    reqs = []
    for c in configs:
        which, hint = c.rsplit(":", 1)
        path, x = _feeds(build, which, height, width, batch)
        reqs.append(_compiled(core, path, x, {"INFERENCE_PRECISION_HINT": hint}, mmap=which == "fp32"))
        gc.collect()
        reqs[-1][0].infer(reqs[-1][1])  # weights repacked on the first call
        print(f"{c}: compiled, {_resident()}", file=sys.stderr, flush=True)
    times: list[list[float]] = [[] for _ in configs]
    for r in range(rounds + 1):
        for k, (req, x) in enumerate(reqs):
            t0 = time.perf_counter()
            req.infer(x)
            if r:
                times[k].append(time.perf_counter() - t0)
        if r and rounds <= 30:
            print(f"round {r}: " + " ".join(f"{t[-1]:.4g}" for t in times), file=sys.stderr, flush=True)
    return [
        {"config": c, "median_s": float(np.median(t)), "calls_s": [float(f"{v:.4g}") for v in t]}
        for c, t in zip(configs, times)
    ]


def _calls(calls: list[float]) -> str:
    """A configuration's call times for the table: all of them, or their range when there are many."""
    return str(calls) if len(calls) <= 15 else f"{min(calls):.4g}-{max(calls):.4g} ({len(calls)} calls)"


def _resident() -> str:
    """This process's resident memory: anonymous (what it allocated) and file pages (mapped files)."""
    d = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("RssAnon", "RssFile"):
            d[k] = int(v.split()[0]) / 2**20
    return f"resident {d.get('RssAnon', 0):.1f} GB anonymous + {d.get('RssFile', 0):.1f} GB file pages"


def table(results: list[dict], top: int) -> str:
    keys: collections.Counter[str] = collections.Counter()
    for r in results:
        for k, (s, _) in r["layers"].items():
            keys[k] = max(keys[k], s)
    head = [r["config"] for r in results]
    lines = [
        "| | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(head),
        "| call, median s | " + " | ".join(f"{r['median_s']:.3f}" for r in results) + " |",
        "| layers summed, s | " + " | ".join(f"{sum(v[0] for v in r['layers'].values()):.3f}" for r in results) + " |",
        "| peak RSS GB | " + " | ".join(f"{r['peak_rss_gb']:.1f}" for r in results) + " |",
    ]
    for k, _ in keys.most_common(top):
        cells = []
        for r in results:
            s, n = r["layers"].get(k, (0.0, 0))
            cells.append(f"{s:.3f} ({n})" if n else "-")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cpu() -> str:
    from edgeq.runtime.cpu import detect

    return detect().describe()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("build", type=Path)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--configs",
        nargs="+",
        default=["int8:f32", "int8:bf16", "fp32:bf16", "fp32:f32"],
        help="GRAPH:HINT; GRAPH is int8 (the build's UNet), fp32 (its FP32 source) or a model file fed alike",
    )
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, help="write OUT.md and OUT.json")
    ap.add_argument(
        "--interleave",
        type=int,
        metavar="ROUNDS",
        help="time only: all configurations in one process, ROUNDS rounds calling each in turn; "
        "ratios against the first configuration",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.interleave:
        res = interleaved(args.build, args.configs, args.height, args.width, args.batch, args.interleave)
        base = res[0]["median_s"]
        cpu = _cpu()
        text = (
            f"# OpenVINO UNet latency, interleaved: {args.build}, {args.height}x{args.width} px, batch {args.batch}\n\n"
            f"`python tools/profile_openvino_build.py {args.build} --height {args.height} --width {args.width} "
            f"--batch {args.batch} --interleave {args.interleave} --configs {' '.join(args.configs)}`; CPU "
            f"{cpu}; {time.strftime('%Y-%m-%d')}. Medians of {args.interleave} rounds after a warm-up round, "
            "each round calling every configuration once; paired: the median over rounds of the first "
            "configuration's time in that round over this one's (robust to the machine's load changing "
            "between rounds). The FP32 source is compiled from its mapped file, every other graph from memory "
            "(ENABLE_MMAP off), so that the FP32 graph's mapped pages cannot push an INT8 graph's weights out "
            "of memory between its calls.\n\n| configuration | median s | speed vs the first (medians) | paired | calls s |\n"
            "|---|---|---|---|---|\n"
        )
        first = res[0]["calls_s"]
        for r in res:
            r["paired_speed"] = float(np.median([a / b for a, b in zip(first, r["calls_s"])]))
        text += "".join(
            f"| {r['config']} | {r['median_s']:.4g} | {base / r['median_s']:.2f}x | {r['paired_speed']:.2f}x | "
            f"{_calls(r['calls_s'])} |\n"
            for r in res
        )
        print(text)
        if args.out:
            args.out.with_suffix(".md").write_text(text)
            args.out.with_suffix(".json").write_text(
                json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": res}, indent=1)
            )
        return
    if args.child:
        which, hint = args.child.rsplit(":", 1)
        r = child(args.build, which, hint, args.height, args.width, args.batch, args.repeats)
        print("RESULT " + json.dumps(r))
        return
    results = []
    for c in args.configs:
        cmd = [sys.executable, __file__, str(args.build), "--child", c, "--height", str(args.height)]
        cmd += ["--width", str(args.width), "--batch", str(args.batch), "--repeats", str(args.repeats)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{c} failed:\n{p.stderr[-3000:]}")
        results.append(json.loads(line[7:]))
        print(f"{c}: {results[-1]['median_s']:.3f} s per call {results[-1]['calls_s']}", flush=True)
    cpu = _cpu()
    import openvino as ov

    head = (
        f"# OpenVINO per-layer profile: {args.build} UNet, {args.height}x{args.width} px, batch {args.batch}\n\n"
        f"`python tools/profile_openvino_build.py {args.build} --height {args.height} --width {args.width} "
        f"--batch {args.batch} --repeats {args.repeats} --configs {' '.join(args.configs)}`; OpenVINO "
        f"{ov.__version__}; CPU {cpu}; {time.strftime('%Y-%m-%d')}. Seconds of the last call "
        "per layer type:execution precision (layer count); configurations `graph:hint`.\n\n"
    )
    text = head + table(results, args.top)
    print(text)
    if args.out:
        args.out.with_suffix(".md").write_text(text)
        args.out.with_suffix(".json").write_text(
            json.dumps(
                {"args": vars(args) | {"build": str(args.build), "out": str(args.out)}, "results": results}, indent=1
            )
        )


if __name__ == "__main__":
    main()
