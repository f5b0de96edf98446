#!/usr/bin/env python
"""Calibration on one process against a local Ray cluster, in one run: time, identical results,
Ray's per-task overhead, and a scaling projection.

For each mode, a fresh cache (the FP32 export copied in) and ``edgeq calibrate MODEL`` (capture +
statistics): wall time and the statistics files' contents, which must be identical. Ray's per-task
overhead: no-op tasks on a local Ray. The projection for W one-core workers keeps what stays
serial (Ray's start, workers loading the model, the driver's merge) and divides the work
(single-process seconds x cores, since the single process already uses every core).

    python tools/bench_cluster.py [--model tiny-sd] [--num-calib N] [--workers 8 32]
    python tools/make_sd15_shaped.py && python tools/bench_cluster.py --model build/sd15-shaped
"""

from __future__ import annotations

import argparse
import json
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
    args = ap.parse_args()
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
        secs, log, peak = run([*common, *extra, "--cache-dir", str(cache)])
        merges = [float(m) for m in re.findall(r"partials merged on the driver in ([0-9.]+) s", log)]
        prompts = len(list(next(cache.glob("capture-calibration-*")).glob("shard-*.npz")))
        res[mode] = {
            "seconds": round(secs, 1),
            "peak_rss_gb": round(peak, 2),
            "stats": stats_bytes(cache),
            "merge_s": sum(merges),
            "prompts": prompts,
        }
        print(mode, res[mode]["seconds"], "s", f"{peak:.2f} GB", flush=True)
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
    prompts = res["single process"]["prompts"]
    tasks = prompts + 2 * 2 * cores  # capture tasks + statistics tasks (2 components)
    proj = {w: round(startup + work / w + tasks * per_task / w, 1) for w in args.workers}
    lines = [
        f"{name}, `edgeq calibrate{' ' + ' '.join(calib) if calib else ''}` ({prompts} prompts; capture + statistics), "
        "fresh caches; "
        f"{os.cpu_count()} cores; CPU {cpu.describe()}; ray {library_versions().get('ray', '?')}",
        "",
        "| mode | wall s | peak RSS GB (all processes) | statistics identical to single process |",
        "|---|---|---|---|",
        f"| single process | {single:.1f} | {res['single process']['peak_rss_gb']:.2f} | - |",
        f"| local Ray, {os.cpu_count()} workers | {ray_s:.1f} | {res['local Ray']['peak_rss_gb']:.2f} | "
        f"{'yes' if identical else '**no**'} |",
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
    (ROOT / "benchmarks" / f"cluster_{name}.md").write_text(md)
    payload = {"cpu": cpu.to_dict(), "results": res, "per_task_s": per_task, "projection": proj, "identical": identical}
    (ROOT / "benchmarks" / f"cluster_{name}.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
