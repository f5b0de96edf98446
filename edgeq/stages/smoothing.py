"""SmoothQuant as a measured choice: off or one of the profile's alphas, per model."""

from __future__ import annotations

import time
from pathlib import Path

from edgeq.calibrate.capture import Capture
from edgeq.calibrate.collect import Stats
from edgeq.stages.context import Context

SMOOTH_CALLS = 40  # calibration calls each SmoothQuant candidate is calibrated and measured on


def choose_smoothing(ctx: Context, cap: Capture, policy, decisions, tensors, log=print) -> tuple[Path, dict]:
    """SmoothQuant off or one of the profile's alphas, whichever gives the best simulated worst group.

    Each candidate: the smoothed graph (cached), statistics on SMOOTH_CALLS calibration calls, shared
    ranges, and the all-quantized switchable graph's SQNR per group on the same calls. The choice
    (and every candidate's score) is cached and recorded in the quant plan.
    """
    import numpy as np
    import onnx

    from edgeq.quantize.sensitivity import Evaluator, switchable_model
    from edgeq.quantize.smooth import channel_absmax, sites, write_smoothed
    from edgeq.stages.calibration import ComponentStats, collect_stats
    from edgeq.stages.mixed import unet_eval_samples
    from edgeq.stages.ranges import base_method, choose_ranges, make_groups

    fp32 = ctx.export.path("unet")
    found = sites(onnx.load(str(fp32), load_external_data=False).graph, list(decisions))
    if not found:
        return fp32, {"alpha": None, "sites": 0, "reason": "no LayerNorm feeds only quantized linear layers"}
    inputs = (ctx.export.key, str(cap.folder), policy.smoothquant_alphas, SMOOTH_CALLS)
    limit = min(SMOOTH_CALLS, len(cap))

    def smoothed(alpha: float) -> Path:
        def make(tmp: Path) -> None:
            calls = [s.feeds for s in cap.unet_samples(limit)]
            act_max = channel_absmax(fp32, [s.tensor for s in found], calls[:16])
            write_smoothed(fp32, found, act_max, alpha, tmp / "model.onnx")

        return ctx.stages.folder("smooth-unet", *inputs, alpha, make=make) / "model.onnx"

    def measure() -> dict:
        t0 = time.time()
        candidates: list[dict] = []
        for alpha in (None, *policy.smoothquant_alphas):
            path = fp32 if alpha is None else smoothed(alpha)
            stats_path = ctx.stages.file(
                "stats-smooth", *inputs, alpha, suffix=".npz",
                make=lambda tmp, path=path: collect_stats(ctx, path, list(tensors), cap, "unet", tmp, limit),
            )  # fmt: skip
            cal = ComponentStats("unet", policy, decisions, tensors, Stats.load(stats_path))
            groups = make_groups(ctx, cal.stats)
            _, shared = choose_ranges(cal, groups, base_method(ctx.plan.range_method or policy.range_method))
            samples = unet_eval_samples(ctx, cap, [g.to_dict() for g in groups], limit)
            sw = switchable_model(path, list(decisions), policy)
            ev = Evaluator(sw, samples, [shared] * len(groups), policy.activation_symmetric, ctx.cache)
            sq = ev.sqnr(np.ones(len(sw.nodes), np.float32))
            candidates.append({"alpha": alpha, "worst_db": float(sq.min()), "mean_db": float(sq.mean())})
            log(f"smoothquant alpha {alpha}: worst group {sq.min():.2f} dB, mean {sq.mean():.2f} dB (simulated)")
        best = max(candidates, key=lambda c: c["worst_db"])
        return {
            "alpha": best["alpha"],
            "sites": len(found),
            "candidates": candidates,
            "seconds": round(time.time() - t0, 1),
            "reason": f"best simulated worst-group SQNR on {limit} calibration calls",
        }

    with ctx.stages.timed("smoothquant_s"):
        choice = ctx.stages.json("smooth-choice", *inputs, make=measure)
    path = fp32 if choice["alpha"] is None else smoothed(choice["alpha"])
    return path, choice
