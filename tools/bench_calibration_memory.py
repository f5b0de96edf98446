#!/usr/bin/env python
"""Peak memory of calibration on the SD1.5-shaped UNet, as `edgeq build` runs it: statistics in a
child process (edgeq.stages.calibration.collect_isolated), then ranges and Q/DQ insertion in the
parent (edgeq.stages.ranges.choose_ranges, edgeq.stages.qdq.quantize_component).

Needs the FP32 UNet that tools/bench_sd15_unet.py exports (build/sd15-unet-bench/). Random inputs
spread over the timesteps (speed and memory only). Prints the two peaks and the times.

    python tools/bench_calibration_memory.py [--inputs 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
sys.path.insert(0, str(TOOLS.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=3)
    n = ap.parse_args().inputs
    from bench_sd15_unet import WORK, RandomCalls, group_ranges, unet_candidates

    from edgeq.calibrate.collect import Stats
    from edgeq.stages.calibration import ComponentStats, collect_isolated
    from edgeq.stages.qdq import quantize_component

    fp32 = WORK / "fp32" / "unet" / "model.onnx"
    if not fp32.is_file():
        sys.exit(f"{fp32} does not exist: run tools/bench_sd15_unet.py first")
    policy, decisions, tensors = unet_candidates(fp32, "openvino")
    out = WORK / f"isolated-stats-{n}.npz"
    out.unlink(missing_ok=True)
    calls = RandomCalls(tuple(float(t) for t in range(999, 0, -(999 // n))[:n]))
    t0 = time.time()
    collect_isolated(fp32, list(tensors), calls, "unet", out)
    cal = ComponentStats("unet", policy, decisions, tensors, Stats.load(out), fp32)
    t1 = time.time()
    _, (ranges,) = group_ranges(cal)
    with tempfile.TemporaryDirectory(dir=WORK, prefix="qdq-") as td:
        quantize_component(fp32, decisions, policy, ranges, Path(td) / "model.onnx")
    print(
        json.dumps(
            {
                "stats_s": round(t1 - t0, 1),
                "total_s": round(time.time() - t0, 1),
                "parent_peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                "child_peak_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
            }
        )
    )


if __name__ == "__main__":
    main()
