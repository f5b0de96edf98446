"""Timestep groups and activation ranges: per group and one shared range per tensor.

With ``range_method = "auto"`` the UNet's method is chosen per tensor class by measurement
(:mod:`edgeq.quantize.range_choice`), cached per inputs.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from edgeq.calibrate.capture import Capture
from edgeq.calibrate.collect import Stats
from edgeq.calibrate.grouping import Group, by_profile, uniform
from edgeq.calibrate.histogram import select_range, select_shared_range
from edgeq.stages.context import Context

MIXED_CALLS = 80  # calibration calls the measured choices (range classes, mixed precision) evaluate


def make_groups(ctx: Context, stats: Stats) -> list[Group]:
    n = min(ctx.plan.groups, len(stats.timesteps))
    if ctx.plan.grouping == "uniform" or n == 1:
        return uniform(stats.timesteps, n)
    return by_profile(stats.timesteps, stats.absmax_profile(), n)


def bits_of(policy) -> int:
    return 16 if "16" in policy.activation_type else 8


def choose_ranges(cal, groups: list[Group], method: str, tensors=None) -> tuple[list[dict], dict]:
    """Per-group ranges and the one shared range of every tensor of ``cal`` (or of ``tensors``)."""
    sym = cal.policy.activation_symmetric
    bits = bits_of(cal.policy)
    per_group: list[dict[str, tuple[float, float]]] = [{} for _ in groups]
    shared: dict[str, tuple[float, float]] = {}
    for t in cal.tensors if tensors is None else tensors:
        hists = [cal.stats.group(t, g.steps) for g in groups]
        for g, h in enumerate(hists):
            per_group[g][t] = tuple(float(v) for v in select_range(h, method, sym, bits=bits))
        shared[t] = tuple(
            float(v) for v in select_shared_range(hists, [len(g.steps) for g in groups], method, sym, bits)
        )
    return per_group, shared


def single_ranges(cal, method: str) -> dict[str, tuple[float, float]]:
    """One range per tensor of a component calibrated as one group (the VAE decoder)."""
    sym, bits = cal.policy.activation_symmetric, bits_of(cal.policy)
    return {
        t: tuple(float(v) for v in select_range(cal.stats.group(t, [0]), method, sym, bits=bits)) for t in cal.tensors
    }


def base_method(method: str) -> str:
    """The fixed method ``auto`` starts from (and uses before the classes are measured)."""
    return "mse" if method == "auto" else method


def unet_ranges(
    ctx: Context, cal, groups: list[Group], cap: Capture, fp32: Path, method: str, log=print, known=None
) -> tuple[list[dict], dict, dict | None]:
    """Per-group and shared ranges of every UNet tensor: by ``method`` (``known``: ranges already
    chosen by it, for the tensors they cover), or for ``auto`` by the method each tensor class
    measured best with. Returns (per group, shared, the per-class choice or None)."""
    if method != "auto":
        per_group, shared = known if known is not None else ([{} for _ in groups], {})
        missing = [t for t in cal.tensors if t not in shared]  # e.g. the split Convs' own outputs
        if missing:
            extra_g, extra = choose_ranges(cal, groups, method, missing)
            shared = shared | extra
            per_group = [r | e for r, e in zip(per_group, extra_g)]
        return per_group, shared, None
    import numpy as np
    import onnx

    from edgeq.quantize.range_choice import CANDIDATES, RangeChoice, choose, tensor_classes
    from edgeq.quantize.sensitivity import Evaluator, switchable_model
    from edgeq.stages.mixed import unet_eval_samples

    default = base_method(method)
    by_method = {m: choose_ranges(cal, groups, m) for m in CANDIDATES}
    gd = [g.to_dict() for g in groups]

    def measure() -> dict:
        t0 = time.time()
        classes = tensor_classes(
            onnx.load(str(fp32), load_external_data=False).graph, list(cal.tensors), list(cal.decisions)
        )
        sw = switchable_model(fp32, list(cal.decisions), cal.policy)
        samples = unet_eval_samples(ctx, cap, gd, MIXED_CALLS)
        ev = Evaluator(sw, samples, [by_method[default][1]] * len(groups), cal.policy.activation_symmetric, ctx.cache)
        gates = np.ones(len(sw.nodes), np.float32)

        def worst(ranges: dict) -> float:
            ev.set_ranges([ranges] * len(groups))
            return float(ev.sqnr(gates).min())

        log(f"range method per tensor class: {len(set(classes.values()))} classes on {len(samples)} calibration calls")
        choice = choose(classes, {m: by_method[m][1] for m in CANDIDATES}, worst, default, log)
        choice.calls = len(samples)
        return choice.to_dict() | {"seconds": round(time.time() - t0, 1)}

    inputs = (ctx.export.key, asdict(cal.policy), gd, [asdict(d) for d in cal.decisions], str(cap.folder))
    with ctx.stages.timed("range_choice_s"):
        raw = ctx.stages.json("ranges-unet", *inputs, MIXED_CALLS, str(fp32), cal.tensors, make=measure)
    choice = RangeChoice.from_dict(raw)
    per_group = [{t: by_method[choice.method_of(t)][0][g][t] for t in cal.tensors} for g in range(len(groups))]
    shared = {t: by_method[choice.method_of(t)][1][t] for t in cal.tensors}
    return per_group, shared, choice.to_dict()
