"""``edgeq sensitivity``: every UNet candidate node quantized alone and left float alone.

Measured on held-out captured calls with the ranges the build would deploy (per-group ranges for
``--group-mode per-group``, else the shared ones). With a goal (``--goal-sqnr`` or the profile's),
also the mixed-precision search and its trade-off curve.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgeq.errors import EdgeqError
from edgeq.fsutil import staged_dir, write_json
from edgeq.stages.calibration import calibrate, capture_set
from edgeq.stages.config import BuildOptions
from edgeq.stages.context import prepare
from edgeq.stages.mixed import float_shares, unet_eval_samples, unet_macs
from edgeq.stages.qdq import unet_source
from edgeq.stages.ranges import base_method, choose_ranges, make_groups, unet_ranges


def sensitivity_analysis(
    opts: BuildOptions, calls: int = 80, out: Path | None = None, log=print
) -> tuple[dict[str, Any], Path]:
    """Writes sensitivity.json, sensitivity.md, sensitivity.png (and tradeoff.png) into ``out``."""
    if calls < 1:
        raise EdgeqError(f"--calls must be at least 1, got {calls}")
    from edgeq.stages.cluster import connect

    with connect(opts.cluster, log) as cluster:  # capture and statistics there; the ranking runs here
        return _analysis(opts, calls, out, log, cluster)


def _analysis(opts: BuildOptions, calls: int, out: Path | None, log, cluster) -> tuple[dict[str, Any], Path]:
    from edgeq.quantize.sensitivity import Evaluator, measure, search, switchable_model
    from edgeq.verify.report import _png, sensitivity_plot, tradeoff_plot

    ctx = prepare(opts, log, cluster)
    cal_cap = capture_set(ctx, "calibration")
    cal = calibrate(ctx, cal_cap, log)["unet"]
    if not cal.quantized or not any(d.quantized for d in cal.decisions):
        raise EdgeqError(
            f"target {ctx.profile.name} quantizes no UNet node: nothing to rank", 'set [unet] mode = "int8"'
        )
    out = out or Path("build") / f"{ctx.spec.name.strip('./').replace('/', '_')}-{ctx.profile.name}-sensitivity"
    method = ctx.plan.range_method or cal.policy.range_method
    groups = make_groups(ctx, cal.stats)
    known = choose_ranges(cal, groups, base_method(method))
    held = capture_set(ctx, "heldout")
    gd = [g.to_dict() for g in groups]
    samples = unet_eval_samples(ctx, held, gd, max(calls, len(held.timesteps)))
    fp32, splits, cal = unet_source(ctx, cal, known[1], cal_cap)
    per_group, shared, _ = unet_ranges(ctx, cal, groups, cal_cap, fp32, method, log, known)
    per_group_mode = ctx.plan.group_mode == "per-group"
    ranges = per_group if per_group_mode else [shared] * len(groups)
    macs, act_act = unet_macs(ctx, cal, cal_cap, fp32)
    t0 = time.time()
    decisions = list(cal.decisions)
    sw = switchable_model(fp32, decisions, cal.policy)
    ev = Evaluator(sw, samples, ranges, cal.policy.activation_symmetric, ctx.cache)
    base, rows = measure(ev, decisions, macs, act_act)
    shares = float_shares(decisions, macs, act_act)
    res: dict[str, Any] = {
        "model": ctx.spec.name,
        "target": ctx.profile.name,
        "ranges": "per-group" if per_group_mode else "shared",
        "groups": gd,
        "calls": len(samples),
        "baseline_db": [float(v) for v in base],
        "float_macs": shares,
        "nodes": [r.to_dict() for r in rows],
        "profile_exclusions": [asdict(d) for d in decisions if not d.quantized],
        "splits": [x.to_dict() for x in splits],
    }
    goal = ctx.plan.goal_sqnr_db
    if goal is not None:
        share = {r.node: r.mac_share for r in rows}
        mp = search(ev, sw, share, goal, cal.policy.max_float_mac_share, base_share=shares["float_share"], log=log)
        res["mixed_precision"] = mp.to_dict()
    res["seconds"] = round(time.time() - t0, 1)
    res["evaluated_calls"] = ev.calls
    with staged_dir(out) as stage:
        write_json(stage / "sensitivity.json", res)
        (stage / "sensitivity.png").write_bytes(_png(sensitivity_plot(res["nodes"])))
        if goal is not None:
            (stage / "tradeoff.png").write_bytes(_png(tradeoff_plot(res["mixed_precision"]["curve"], goal)))
        (stage / "sensitivity.md").write_text(markdown(res))
    return res, out


def markdown(res: dict[str, Any]) -> str:
    g = res["groups"]
    lines = [
        f"# UNet sensitivity: {res['model']} -> {res['target']}",
        "",
        f"{res['calls']} held-out UNet calls, {res['ranges']} ranges, {len(res['nodes'])} candidate nodes. "
        "All quantized: " + ", ".join(f"group {x['index']} {v:.2f} dB" for x, v in zip(g, res["baseline_db"])) + ".",
        "",
        "*float gain*: worst-group SQNR gained when only this node is left float (the others quantized). "
        "*alone*: per-group SQNR with only this node quantized. MACs %: of the weight layers' MACs; "
        "attention score/value MatMuls (activation x activation) are marked *attn* and counted apart.",
        "",
        "| rank | node | op | MACs % | float gain dB | alone dB per group |",
        "|---|---|---|---|---|---|",
    ]
    for k, r in enumerate(res["nodes"], 1):
        share = "attn" if r["activation_matmul"] else f"{100 * r['mac_share']:.2f}"
        alone = " / ".join(f"{v:.1f}" for v in r["alone_db"])
        lines.append(f"| {k} | {r['node']} | {r['op_type']} | {share} | {r['float_gain_db']:.2f} | {alone} |")
    lines += ["", "![sensitivity](sensitivity.png)", ""]
    mp = res.get("mixed_precision")
    if mp:
        lines += [
            f"## Mixed precision to worst group >= {mp['goal_db']:g} dB: {'met' if mp['met'] else 'not met'}",
            "",
            "| float share % | worst dB | mean dB | nodes float |",
            "|---|---|---|---|",
            *(
                f"| {100 * c['float_share']:.2f} | {c['worst_db']:.2f} | {c['mean_db']:.2f} | {c['nodes_float']} |"
                for c in mp["curve"]
            ),
            "",
            "![trade-off](tradeoff.png)",
            "",
        ]
    return "\n".join(lines)
