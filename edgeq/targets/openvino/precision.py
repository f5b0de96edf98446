"""The precision of what stays float, as a measured choice (``inference_precision = "auto"``).

OpenVINO's CPU plugin runs every float layer in bf16 by itself on CPUs with AVX512-BF16 or AMX-BF16;
edgeq always sets the hint, so the choice is explicit. With ``auto`` the build host measures the
UNet with the f32 hint and with the bf16 hint (latency on a held-out call, SQNR against FP32 on a few
held-out calls) and picks bf16 only where it is faster by ``MIN_SPEEDUP`` and no measured call loses
more than ``MAX_LOSS_DB`` of SQNR (half the kernel-fidelity gate's 1 dB, which bf16's error counts in); a CPU without bf16 gets f32 without measuring (OpenVINO
would run f32 there anyway). The measurement and the reason go in the manifest. A build deployed on a
CPU without bf16 runs its bf16 layers in f32: OpenVINO falls back silently, and ``edgeq check``
measures what that machine computes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
MIN_SPEEDUP = 1.1  # bf16 must be at least this much faster than f32 on the UNet
MAX_LOSS_DB = 0.5  # and no held-out call may lose more SQNR than this (the kernel gate allows 1 dB)
CALLS = 6  # held-out UNet calls measured (spread over the trajectory)
REPEATS = 3  # timed calls after one warm-up


@dataclass(frozen=True)
class HintMeasure:
    """The UNet compiled with one precision hint."""

    hint: str
    median_s: float  # one UNet call, median of REPEATS after a warm-up
    sqnr_db: tuple[float, ...]  # against the FP32 UNet, per measured held-out call
    layers: dict[str, int]  # compute layers by the precision they ran in


@dataclass(frozen=True)
class PrecisionChoice:
    chosen: str
    reason: str
    measured: tuple[HintMeasure, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": "auto",
            "chosen": self.chosen,
            "reason": self.reason,
            "measured": [asdict(m) for m in self.measured],
        }


def decide(f32: HintMeasure, bf16: HintMeasure) -> tuple[str, str]:
    """bf16 where it is measured faster by MIN_SPEEDUP and no call loses more than MAX_LOSS_DB against f32."""
    ran_bf16 = sum(v for k, v in bf16.layers.items() if k.endswith(":bf16"))
    speedup = f32.median_s / bf16.median_s
    loss = max(f - b for f, b in zip(f32.sqnr_db, bf16.sqnr_db))
    measured = (
        f"bf16 {speedup:.2f}x the f32 hint's speed, UNet SQNR {min(bf16.sqnr_db):.2f}-{max(bf16.sqnr_db):.2f} dB "
        f"against {min(f32.sqnr_db):.2f}-{max(f32.sqnr_db):.2f} with f32"
    )
    if ran_bf16 == 0:
        return "f32", f"with the bf16 hint OpenVINO ran no layer in bf16 ({measured})"
    if speedup < MIN_SPEEDUP:
        return "f32", f"{measured}: not {MIN_SPEEDUP}x faster"
    if loss > MAX_LOSS_DB:
        return "f32", f"{measured}: a call loses {loss:.2f} dB (more than {MAX_LOSS_DB})"
    return "bf16", measured


def measure(path: Path, samples: list, hint: str, device: str, performance_hint: str) -> HintMeasure:
    """Compile ``path`` with ``hint``; time one held-out call, score every sample against its reference."""
    from edgeq.targets.openvino import OpenVinoRunner
    from edgeq.verify.metrics import sqnr_db

    runner = OpenVinoRunner(path, device, hint, performance_hint, cache=False)
    out_name = runner.outputs[0].get_any_name()
    db = tuple(round(sqnr_db(s.reference, runner.run(s.feeds)[out_name]), 2) for s in samples)
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        runner.run(samples[0].feeds)
        times.append(time.perf_counter() - t0)
    return HintMeasure(hint, round(float(np.median(times)), 4), db, runner.layer_precisions())


def choose(
    path: Path, samples: Callable[[], list], flags: tuple[str, ...], device: str, performance_hint: str
) -> PrecisionChoice:
    """The hint for a build: f32 without measuring where the CPU has no bf16, else the measured choice
    on ``samples()`` (read only then)."""
    if not device.startswith("CPU"):
        return PrecisionChoice("f32", f"device {device}: auto measures CPUs only; f32 (set the hint to choose)")
    have = [f for f in BF16_FLAGS if f in flags]
    if not have:
        return PrecisionChoice(
            "f32", f"this CPU has no bf16 ({' '.join(flags) or 'no flags seen'}): OpenVINO runs f32 here anyway"
        )
    calls = samples()
    if not calls:
        return PrecisionChoice("f32", "no held-out UNet calls with references to measure bf16 against")
    f32 = measure(path, calls, "f32", device, performance_hint)
    bf16 = measure(path, calls, "bf16", device, performance_hint)
    chosen, reason = decide(f32, bf16)
    return PrecisionChoice(chosen, f"{'/'.join(have)}: {reason}", (f32, bf16))


def heldout_samples(ctx, n: int = CALLS) -> list:
    """``n`` held-out UNet calls with their FP32 outputs, spread over the trajectory."""
    from edgeq.stages.calibration import capture_set

    cap = capture_set(ctx, "heldout")
    one_per_step = sorted(cap.unet_samples(limit=len(cap.timesteps)), key=lambda s: s.step)
    samples = [s for s in one_per_step if s.reference is not None]
    if len(samples) <= n:
        return samples
    return [samples[int(i)] for i in np.linspace(0, len(samples) - 1, n)]
