#!/usr/bin/env python
"""Peak memory of calibration on the SD1.5-shaped UNet, as `edgeq build` runs it: statistics in a
child process (edgeq.build.collect_isolated), then Q/DQ insertion in the parent.

Needs the FP32 UNet that tools/bench_sd15_unet.py exports (build/sd15-unet-bench/). Random inputs
spread over the timesteps (speed and memory only). Prints the two peaks and the times.

    python tools/bench_calibration_memory.py [--inputs 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import onnx

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
sys.path.insert(0, str(TOOLS.parent))


@dataclass(frozen=True)
class Sample:
    step: int
    feeds: dict


@dataclass(frozen=True)
class RandomInputs:
    """Stands in for a captured trajectory (edgeq.calibrate.capture.Capture): random UNet inputs."""

    n: int
    timesteps: tuple

    def unet_samples(self, limit=None):
        from bench_sd15_unet import feeds

        for i in range(self.n):
            yield Sample(i, feeds(i, self.timesteps[i]))

    def __len__(self):
        return self.n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=3)
    n = ap.parse_args().inputs
    from edgeq.build import collect_isolated
    from edgeq.calibrate.collect import Stats
    from edgeq.calibrate.histogram import select_range
    from edgeq.quantize.insert import quantize_graph
    from edgeq.quantize.policy import decide, tensors_to_calibrate
    from edgeq.quantize.profile import load_profile

    fp32 = TOOLS.parent / "build" / "sd15-unet-bench" / "fp32" / "unet" / "model.onnx"
    pol = load_profile("openvino").policy("unet")
    g = onnx.load(str(fp32), load_external_data=False).graph
    d = decide(g, pol)
    ts = tensors_to_calibrate(g, d)
    out = fp32.parent.parent.parent / f"isolated-stats-{n}.npz"
    out.unlink(missing_ok=True)
    t0 = time.time()
    collect_isolated(fp32, ts, RandomInputs(n, tuple(float(t) for t in range(999, 0, -(999 // n))[:n])), "unet", out)
    st = Stats.load(out)
    t1 = time.time()
    r = {t: tuple(float(v) for v in select_range(st.group(t, list(range(n))), "mse", False)) for t in ts}
    quantize_graph(fp32, d, pol, r)
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
