"""Mixed precision: MAC shares of the UNet's layers and the fewest float nodes that reach the goal."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from edgeq.calibrate.capture import Capture
from edgeq.calibrate.grouping import Group
from edgeq.quantize.policy import Decision
from edgeq.stages.context import Context
from edgeq.stages.ranges import MIXED_CALLS


def unet_eval_samples(ctx: Context, cap: Capture, groups: list[dict], limit: int | None) -> list:
    """Captured UNet calls with their FP32 outputs and timestep group, for the sensitivity evaluator."""
    from edgeq.quantize.sensitivity import EvalSample
    from edgeq.runtime.groups import group_for
    from edgeq.runtime.sessions import OrtRunner

    fp32 = None
    out = []
    for s in cap.unet_samples(limit if limit is not None and limit < len(cap) else None):
        ref = s.reference
        if ref is None:  # a capture made before outputs were recorded
            fp32 = fp32 or OrtRunner(ctx.export.path("unet"))
            ref = fp32.run(s.feeds)["out_sample"]
        out.append(EvalSample(s.feeds, ref, group_for(groups, s.timestep)))
    return out


def unet_macs(ctx: Context, cal, cap: Capture, fp32: Path) -> tuple[dict[str, int], set[str]]:
    """MACs of every candidate node of ``fp32`` for one captured call, and the activation-by-activation
    MatMuls. Cached: the mixed-precision search, the quant plan and ``edgeq sensitivity`` all ask."""
    import onnx

    from edgeq.quantize.policy import constant_names
    from edgeq.quantize.sensitivity import count_macs

    nodes = [d.node for d in cal.decisions]

    def count() -> dict:
        g = onnx.load(str(fp32), load_external_data=False).graph
        const = constant_names(g)
        act_act = sorted(n.name for n in g.node if n.op_type == "MatMul" and n.input[1] not in const)
        feeds = next(iter(cap.unet_samples(len(cap.timesteps)))).feeds
        macs = count_macs(fp32, feeds, nodes)
        return {"macs": macs, "activation_matmuls": act_act}

    res = ctx.stages.json("macs-unet", str(fp32), nodes, str(cap.folder), make=count)
    return res["macs"], set(res["activation_matmuls"])


def float_shares(decisions, macs: dict[str, int], act_act: set[str]) -> dict[str, Any]:
    """Share of the weight layers' MACs left float, and the attention MatMuls apart."""
    weight = {d.node: macs.get(d.node, 0) for d in decisions if d.node not in act_act}
    total = max(sum(weight.values()), 1)
    att = [d for d in decisions if d.node in act_act]
    return {
        "weight_layer_macs": sum(weight.values()),
        "float_share": sum(v for d in decisions if d.node in weight and not d.quantized for v in [weight[d.node]])
        / total,
        "attention_matmul_macs": sum(macs.get(d.node, 0) for d in att),
        "attention_matmuls_float": sum(1 for d in att if not d.quantized),
        "attention_matmuls": len(att),
    }


def mixed_precision(
    ctx: Context, cal, groups: list[Group], shared: dict, cap: Capture, fp32: Path, log=print
) -> tuple[tuple[Decision, ...], dict]:
    """Leave float the fewest nodes that bring the worst group to the goal (cached per inputs).

    Searched on calibration calls with the shared ranges (the harder case: per-group ranges only
    do better), then measured for real by the build's checks on held-out prompts.
    """
    from edgeq.quantize.sensitivity import Evaluator, search, switchable_model

    goal = ctx.plan.goal_sqnr_db

    def run() -> dict:
        macs, act_act = unet_macs(ctx, cal, cap, fp32)
        base = float_shares(cal.decisions, macs, act_act)
        weight_total = max(base["weight_layer_macs"], 1)
        share = {n: (0.0 if n in act_act else v / weight_total) for n, v in macs.items()}
        sw = switchable_model(fp32, list(cal.decisions), cal.policy)
        samples = unet_eval_samples(ctx, cap, [g.to_dict() for g in groups], MIXED_CALLS)
        ev = Evaluator(sw, samples, [shared] * len(groups), cal.policy.activation_symmetric, ctx.cache)
        aim = goal + cal.policy.goal_margin_db
        log(f"mixed precision: goal worst-group SQNR >= {goal} dB (searching to {aim:g}) on {len(samples)} calls")
        mp = search(ev, sw, share, aim, cal.policy.max_float_mac_share, base_share=base["float_share"], log=log)
        return mp.to_dict() | {
            "goal_db": goal,
            "searched_to_db": aim,
            "macs": macs,
            "activation_matmuls": sorted(act_act),
            "profile_float_share": base["float_share"],
        }

    t0 = time.time()
    res = ctx.stages.json(
        "mixed-unet", ctx.export.key, asdict(cal.policy), goal, shared, [g.to_dict() for g in groups],
        [asdict(d) for d in cal.decisions], str(cap.folder), MIXED_CALLS, str(fp32), make=run,
    )  # fmt: skip
    ctx.timings["mixed_precision_s"] = round(time.time() - t0, 1)
    chosen = {f["node"]: f for f in res["float_nodes"]}
    decisions = tuple(
        replace(
            d,
            quantized=False,
            reason=(
                f"sensitivity: left float to reach worst-group SQNR >= {goal:g} dB; its float copy gained "
                f"{chosen[d.node]['gain_db']:.2f} dB; {100 * chosen[d.node]['mac_share']:.2f}% of weight-layer MACs"
            ),
        )
        if d.node in chosen
        else d
        for d in cal.decisions
    )
    return decisions, res
