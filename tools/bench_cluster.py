#!/usr/bin/env python
"""Calibration on one process against a local Ray cluster, in one run: time, identical results,
Ray's per-task overhead, and a scaling projection.

For each mode, a fresh cache (the FP32 export copied in) and ``edgeq calibrate MODEL`` (capture +
statistics): wall time and the statistics files' contents, which must be identical. Ray's per-task
overhead: no-op tasks on a local Ray. The projection for W one-core workers keeps what stays
serial (Ray's start, workers loading the model, the driver's merge) and divides the work
(capture over prompts, statistics over calls; see ``project``).

    python tools/bench_cluster.py [--model tiny-sd] [--num-calib N] [--workers 8 32]
    python tools/make_sd15_shaped.py && python tools/bench_cluster.py --model build/sd15-shaped
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeq.manifest import library_versions  # noqa: E402
from edgeq.runtime.cpu import detect  # noqa: E402


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (Ray's raylet, GCS and workers included)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def run(args: list[str]) -> tuple[float, str, float]:
    """``edgeq ARGS``: (wall seconds, its output, peak RSS of its process tree in GB, sampled every 0.5 s)."""
    t0 = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeq", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak, out = 0, []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.5)
    reader.join()
    log = "".join(out)
    if proc.returncode != 0:
        raise SystemExit(f"edgeq {' '.join(args)} failed:\n{log[-3000:]}")
    return time.time() - t0, log, peak / 2**30


def stats_bytes(cache: Path) -> dict[str, str]:
    import hashlib

    out = {}
    for f in sorted(cache.glob("stats-*.npz")):
        with np.load(f) as z:
            out[f.name] = hashlib.sha256(b"".join(z[k].tobytes() for k in sorted(z.files))).hexdigest()
    return out


def task_overhead(n: int = 200) -> float:
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")

    @ray.remote
    def noop(i):
        return i

    ray.get([noop.remote(i) for i in range(20)])  # workers up
    t0 = time.perf_counter()
    ray.get([noop.remote(i) for i in range(n)])
    per = (time.perf_counter() - t0) / n
    ray.shutdown()
    return per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-sd")
    ap.add_argument(
        "--num-calib", type=int, default=None, help="default: edgeq's for the model (32 tiny-sd, 2 full size)"
    )
    ap.add_argument("--workers", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--work", type=Path, default=None, help="default: build/cluster-bench[-<model folder>]")
    ap.add_argument("--render", type=Path, help="only re-render the tables from a saved benchmarks/cluster_*.json")
    args = ap.parse_args()
    if args.render:
        return render(json.loads(args.render.read_text()), args.workers)
    name = Path(args.model).name
    work = args.work or ROOT / "build" / ("cluster-bench" if name == "tiny-sd" else f"cluster-bench-{name}")
    base = work / "base"
    if not (base / "fp32" / "manifest.json").is_file():  # the export, made once and copied into each fresh cache
        run(["export", args.model, "--out", str(base / "fp32")])
    calib = ["--num-calib", str(args.num_calib)] if args.num_calib else []
    common = ["calibrate", args.model, *calib, "--num-heldout", "1"]
    res = {}
    for mode, extra in (("single process", []), ("local Ray", ["--cluster", "ray"])):
        cache = work / mode.replace(" ", "-")
        shutil.rmtree(cache, ignore_errors=True)
        shutil.copytree(base / "fp32", cache / "fp32")
        t0 = time.time()
        secs, log, peak = run([*common, *extra, "--cache-dir", str(cache)])
        merges = [float(m) for m in re.findall(r"partials merged on the driver in ([0-9.]+) s", log)]
        cap_dir = next(cache.glob("capture-calibration-*"))
        captured = (cap_dir / "capture.json").stat().st_mtime  # the capture's end: statistics start
        res[mode] = {
            "seconds": round(secs, 1),
            "capture_s": round(captured - t0, 1),
            "statistics_s": round(t0 + secs - captured, 1),
            "peak_rss_gb": round(peak, 2),
            "stats": stats_bytes(cache),
            "merge_s": sum(merges),
            "prompts": len(list(cap_dir.glob("shard-*.npz"))),
        }
        print(mode, res[mode]["seconds"], "s", f"{peak:.2f} GB", flush=True)
    cpu = detect()
    payload = {
        "model": name,
        "command": f"edgeq calibrate{' ' + ' '.join(calib) if calib else ''}",
        "cpu": cpu.to_dict(),
        "cpu_describe": cpu.describe(),
        "cores": os.cpu_count() or 1,
        "ray": library_versions().get("ray", "?"),
        "results": res,
        "per_task_s": task_overhead(),
    }
    render(payload, args.workers)


def project(payload: dict, w: int, prompts: int | None = None) -> float:
    """Projected wall seconds on ``w`` one-core workers, for the measured or another prompt count.

    Capture parallelises over prompts only (one task per prompt): each worker runs ceil(P / W) prompts
    at the one-core time per prompt the local Ray run measured (model load included). Statistics
    parallelise over calls (tasks over chunks of calls, up to 2 per worker): the core-seconds of the
    local Ray run's statistics, divided by W (the statistics read the same number of calls however
    many prompts there are: ``--calib-calls``). The driver's merges and the per-task overhead stay serial.
    """
    ray_r, cores = payload["results"]["local Ray"], payload["cores"]
    measured = ray_r["prompts"]
    p = prompts or measured
    per_prompt = ray_r["capture_s"] / math.ceil(measured / cores)
    stats_core_s = ray_r["statistics_s"] * cores  # the same calls (--calib-calls) however many prompts
    tasks = p + 2 * 2 * w
    return round(
        math.ceil(p / w) * per_prompt + stats_core_s / w + ray_r["merge_s"] + tasks * payload["per_task_s"] / w, 1
    )


def render(payload: dict, workers: list[int]) -> None:
    res, cores, name = payload["results"], payload["cores"], payload["model"]
    single, ray_r = res["single process"], res["local Ray"]
    identical = single["stats"] == ray_r["stats"]
    prompts = single["prompts"]
    many = 32  # what TensorRT Model Optimizer calibrates on (32-64 prompts)
    single_many = round(single["capture_s"] * many / prompts + single["statistics_s"], 1)
    lines = [
        f"{name}, `{payload['command']}` ({prompts} prompts; capture + statistics), fresh caches; "
        f"{cores} cores; CPU {payload['cpu_describe']}; ray {payload['ray']}",
        "",
        "| mode | wall s | capture s | statistics s | peak RSS GB (all processes) | statistics identical |",
        "|---|---|---|---|---|---|",
        f"| single process | {single['seconds']:.1f} | {single['capture_s']:.1f} | {single['statistics_s']:.1f} | "
        f"{single['peak_rss_gb']:.2f} | - |",
        f"| local Ray, {cores} workers | {ray_r['seconds']:.1f} | {ray_r['capture_s']:.1f} | "
        f"{ray_r['statistics_s']:.1f} | {ray_r['peak_rss_gb']:.2f} | {'yes' if identical else '**no**'} |",
        "",
        f"Ray per-task overhead (no-op tasks): {1000 * payload['per_task_s']:.2f} ms. Driver merge of the partials: "
        f"{ray_r['merge_s']:.2f} s. Capture parallelises over prompts (one task each), statistics over calls "
        "(the same calls for any number of prompts).",
        "",
        f"| workers (1 core each) | projected wall s, {prompts} prompts | projected wall s, {many} prompts |",
        "|---|---|---|",
        f"| 1 process, {cores} cores (measured / scaled) | {single['seconds']:.1f} | {single_many} |",
        *(f"| {w} | {project(payload, w)} | {project(payload, w, many)} |" for w in workers),
    ]
    md = "\n".join(lines) + "\n"
    print(md)
    (ROOT / "benchmarks" / f"cluster_{name}.md").write_text(md)
    (ROOT / "benchmarks" / f"cluster_{name}.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
