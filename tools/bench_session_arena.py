#!/usr/bin/env python
"""One unoptimised UNet call without and with ONNX Runtime's memory arena (handed back after every
call), as the calibration capture and statistics run it: time per call and peak RSS, each variant in
its own process (peak RSS is per process). Prints a table.

    python tools/bench_session_arena.py build/.cache/<model>/fp32 [--size 128] [--calls 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one(path: str, arena: bool, size: int, calls: int) -> dict:
    import resource
    import time

    import numpy as np
    import onnxruntime as ort

    from edgeq.calibrate.collect import augmented_session, run_shrinking

    sess = augmented_session(Path(path), [], arena=arena)
    rss = int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 2**20
    rng = np.random.default_rng(0)
    dims = {"batch": 1, "height": size, "width": size, "sequence": 77}
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
    ap.add_argument("--child", choices=["0", "1"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    path = str(a.export / "unet" / "model.onnx")
    if a.child is not None:
        print(json.dumps(one(path, a.child == "1", a.size, a.calls)))
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
            "--child",
            arena,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(
        f"| arena | calls s | loaded GB | peak GB | minor faults (M) | system s |  ({a.export}, {a.size}x{a.size} latents)"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {'handed back' if r['arena'] else 'none'} | {', '.join(map(str, r['calls_s']))} | {r['loaded_gb']} "
            f"| {r['peak_gb']} | {r['minor_faults_m']} | {r['system_s']} |"
        )


if __name__ == "__main__":
    main()
