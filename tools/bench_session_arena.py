#!/usr/bin/env python
"""UNet calls without and with ONNX Runtime's memory arena (handed back after every call): time per
call, peak RSS, page faults, each variant in its own process (peak RSS is per process). By default
one unoptimised batch-1 call, as the calibration capture and statistics run it; ``--optimize
--batch 2`` runs it as the FP32 pipeline does (the held-out capture). Prints a table and, with
``--out``, writes it as markdown.

    python tools/bench_session_arena.py build/.cache/<model>/fp32 [--size 128] [--calls 2]
           [--optimize] [--batch 2] [--out benchmarks/<name>.md]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one(path: str, arena: bool, size: int, calls: int, optimize: bool = False, batch: int = 1) -> dict:
    import resource
    import time

    import numpy as np
    import onnxruntime as ort

    from edgeq.calibrate.collect import augmented_session, run_shrinking

    if optimize:  # as OrtRunner makes it, with the arena as asked
        opts = ort.SessionOptions()
        opts.enable_cpu_mem_arena = arena
        opts.log_severity_level = 3
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    else:
        sess = augmented_session(Path(path), [], arena=arena)
    rss = int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 2**20
    rng = np.random.default_rng(0)
    dims = {"batch": batch, "height": size, "width": size, "sequence": 77}
    feeds = {
        i.name: rng.standard_normal([d if isinstance(d, int) else dims[d] for d in i.shape]).astype(np.float32)
        for i in sess.get_inputs()
    }
    feeds["timestep"] = np.array(500.0, np.float32)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        run_shrinking(sess, ["out_sample"], feeds)
        times.append(round(time.perf_counter() - t0, 2))
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "arena": arena,
        "calls_s": times,
        "loaded_gb": round(rss, 2),
        "peak_gb": round(r.ru_maxrss / 2**20, 2),
        "minor_faults_m": round(r.ru_minflt / 1e6, 1),
        "system_s": round(r.ru_stime, 1),
        "onnxruntime": ort.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path)
    ap.add_argument("--size", type=int, default=128, help="latent height and width (128: 1024 px)")
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--optimize", action="store_true", help="full graph optimisation (the FP32 pipeline's sessions)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--out", type=Path, help="also write the table here (markdown)")
    ap.add_argument("--child", choices=["0", "1"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    path = str(a.export / "unet" / "model.onnx")
    if a.child is not None:
        print(json.dumps(one(path, a.child == "1", a.size, a.calls, a.optimize, a.batch)))
        return
    rows = []
    for arena in ("0", "1"):
        cmd = [
            sys.executable,
            __file__,
            str(a.export),
            "--size",
            str(a.size),
            "--calls",
            str(a.calls),
            "--batch",
            str(a.batch),
            *(["--optimize"] if a.optimize else []),
            "--child",
            arena,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    from edgeq.runtime import cpu as cpu_mod

    how = "optimised" if a.optimize else "unoptimised"
    lines = [
        f"UNet `{a.export}`, {a.size}x{a.size} latents, batch {a.batch}, {how}; {a.calls} calls per process;"
        f" CPU {cpu_mod.detect().describe()},"
        f" onnxruntime {rows[0]['onnxruntime']}",
        "",
        "| arena | calls s | loaded GB | peak GB | minor faults (M) | system s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {'handed back' if r['arena'] else 'none'} | {', '.join(map(str, r['calls_s']))} | {r['loaded_gb']} "
            f"| {r['peak_gb']} | {r['minor_faults_m']} | {r['system_s']} |"
        )
    print("\n".join(lines))
    if a.out:
        a.out.write_text("# One UNet call without and with the memory arena\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
