#!/usr/bin/env python
"""Calibration on one process against a local Ray cluster, in one run: time, identical results,
Ray's per-task overhead, and a scaling projection.

For each mode, a fresh cache (the FP32 export copied in) and ``edgeq calibrate MODEL`` (capture +
statistics): wall time and the statistics files' contents, which must be identical. Ray's per-task
overhead: no-op tasks on a local Ray. The projection for W one-core workers keeps what stays
serial (Ray's start, workers loading the model, the driver's merge) and divides the work
(single-process seconds x cores, since the single process already uses every core).

    python tools/bench_cluster.py [--model tiny-sd] [--num-calib 32] [--workers 8 32]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeq.manifest import library_versions  # noqa: E402
from edgeq.runtime.cpu import detect  # noqa: E402


def run(args: list[str]) -> tuple[float, str]:
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "edgeq", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"edgeq {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return time.time() - t0, r.stdout + r.stderr


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
    ap.add_argument("--num-calib", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "cluster-bench")
    args = ap.parse_args()
    base = args.work / "base"
    if not (base / "fp32").is_dir():  # the export, made once and copied into each fresh cache
        run(["calibrate", args.model, "--num-calib", "1", "--cache-dir", str(base)])
    common = ["calibrate", args.model, "--num-calib", str(args.num_calib), "--num-heldout", "1"]
    res = {}
    for mode, extra in (("single process", []), ("local Ray", ["--cluster", "ray"])):
        cache = args.work / mode.replace(" ", "-")
        shutil.rmtree(cache, ignore_errors=True)
        shutil.copytree(base / "fp32", cache / "fp32")
        secs, log = run([*common, *extra, "--cache-dir", str(cache)])
        merges = [float(m) for m in re.findall(r"partials merged on the driver in ([0-9.]+) s", log)]
        res[mode] = {"seconds": round(secs, 1), "stats": stats_bytes(cache), "merge_s": sum(merges)}
        print(mode, res[mode]["seconds"], "s", flush=True)
    identical = res["single process"]["stats"] == res["local Ray"]["stats"]
    per_task = task_overhead()
    cpu = detect()
    single, ray_s = res["single process"]["seconds"], res["local Ray"]["seconds"]
    # The single process already uses every core (ONNX Runtime's threads); the cluster runs one
    # single-threaded worker per core. So the work is single x cores core-seconds, and what the cluster
    # adds beyond it (Ray's start, each worker loading the model, the driver's merges) is serial.
    cores = os.cpu_count() or 1
    work = single * cores
    startup = max(ray_s - single, 0.0)
    tasks = args.num_calib + 2 * 2 * cores  # capture tasks + statistics tasks (2 components)
    proj = {w: round(startup + work / w + tasks * per_task / w, 1) for w in args.workers}
    lines = [
        f"{args.model}, `edgeq calibrate --num-calib {args.num_calib}` (capture + statistics), fresh caches; "
        f"{os.cpu_count()} cores; CPU {cpu.describe()}; ray {library_versions().get('ray', '?')}",
        "",
        "| mode | wall s | statistics identical to single process |",
        "|---|---|---|",
        f"| single process | {single:.1f} | - |",
        f"| local Ray, {os.cpu_count()} workers | {ray_s:.1f} | {'yes' if identical else '**no**'} |",
        "",
        f"Ray per-task overhead (no-op tasks): {1000 * per_task:.2f} ms. Driver merge of the partials: "
        f"{res['local Ray']['merge_s']:.2f} s. Serial part (Ray's start, workers loading the model, the driver's "
        f"merges: the cluster run minus the single process, which already used all {cores} cores): {startup:.1f} s; "
        f"parallel work: {work:.0f} core-seconds.",
        "",
        "| workers (1 core each) | projected wall s (serial + work / W + tasks x overhead / W) |",
        "|---|---|",
        *(f"| {w} | {t} |" for w, t in proj.items()),
    ]
    md = "\n".join(lines) + "\n"
    print(md)
    (ROOT / "benchmarks" / f"cluster_{args.model}.md").write_text(md)
    payload = {"cpu": cpu.to_dict(), "results": res, "per_task_s": per_task, "projection": proj, "identical": identical}
    (ROOT / "benchmarks" / f"cluster_{args.model}.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
