"""edgeq build: the stages chained, in the order they run.

    plan -> export -> capture -> statistics -> groups, ranges, Q/DQ variants -> variant checks
         -> packaging (target) -> verification bundle and kernel fidelity -> accuracy checks and gates -> report [-> device engines]

Each stage is a module of :mod:`edgeq.stages` that takes and returns small frozen objects and
keeps its result in the build cache (:mod:`edgeq.stages.cache`), so a rerun reuses what has not
changed. The build folder is written under a temporary name and renamed when complete; a build
that fails a gate is kept, marked failed in its manifest, and the command exits non-zero.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from edgeq.fsutil import staged_dir
from edgeq.stages.calibration import calibrate, capture_set
from edgeq.stages.checks import check_folder
from edgeq.stages.config import BuildOptions, BuildPlan, resolve
from edgeq.stages.context import prepare
from edgeq.stages.fidelity import check_fidelity
from edgeq.stages.package import package
from edgeq.stages.qdq import quantize_single, quantize_unet
from edgeq.stages.select import check_variants, choose_mode


@dataclass(frozen=True)
class BuildResult:
    """What a build produced: its plan, and (unless it stopped early) the folder and the report."""

    plan: BuildPlan
    stopped_after: str | None  # "calibrate" | "quantize" | None: ran to the end
    folder: Path | None = None
    report: object | None = None  # edgeq.verify.report.Report


def build(opts: BuildOptions, until: str | None = None, log=print) -> BuildResult:
    """Run the stages up to ``until`` (calibrate | quantize | None = all, checks included)."""
    from edgeq.stages.cluster import connect
    from edgeq.targets import get_target

    t_start = time.time()
    target = get_target(opts.target)  # a bad profile or a missing runtime fails before any work
    with connect(opts.cluster, log) as cluster:  # an unreachable cluster fails before any work too
        return _run(opts, target, until, log, t_start, cluster)


def _run(opts: BuildOptions, target, until: str | None, log, t_start: float, cluster) -> BuildResult:
    ctx = prepare(opts, log, cluster)
    cal_cap = capture_set(ctx, "calibration")
    cals = calibrate(ctx, cal_cap, log)
    if until == "calibrate":
        return BuildResult(ctx.plan, until)
    held_cap = capture_set(ctx, "heldout")
    unet = quantize_unet(ctx, cals["unet"], cal_cap, log) if cals["unet"].quantized else None
    vae_cal = cals.get("vae_decoder")
    vae = quantize_single(ctx, vae_cal) if vae_cal and vae_cal.quantized else None
    metrics, chosen = None, "float"
    if unet is not None:
        cals = {**cals, "unet": unet.calibration}
        metrics = check_variants(ctx, target, unet, held_cap)
        chosen = choose_mode(ctx, unet, metrics)
    out = Path(ctx.plan.out)
    with staged_dir(out) as stage:
        ctx.timings["build_s"] = round(time.time() - t_start, 1)
        with ctx.stages.timed("package_s"):
            package(ctx, target, stage, cals, unet, metrics, chosen, vae)
        if until == "quantize":
            return BuildResult(ctx.plan, until, out)
        with ctx.stages.timed("kernel_fidelity_s"):
            checked = metrics.outputs.get(chosen) if metrics is not None else None
            images = check_fidelity(ctx, target, unet, chosen, held_cap, stage, log, checked)
        rep = check_folder(stage, ctx=ctx, held_cap=held_cap, int8_images=images)
    rep = target.finish(out, ctx, held_cap, rep, log)  # device engines, after the portable checks
    return BuildResult(ctx.plan, None, out, rep)


def print_config(opts: BuildOptions) -> dict:
    """The resolved plan and profile of a build, without running it (``--print-config``)."""
    profile, source, plan = resolve(opts)
    return {"plan": plan.to_dict(), "weights": source.describe(), "profile": profile.raw}


__all__ = ["BuildOptions", "BuildPlan", "BuildResult", "build", "check_folder", "print_config"]
