"""edgeq sensitivity MODEL --target T: what quantizing each UNet node costs, ranked, per timestep group."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeq.cli.build_cmd import add_build_options, options


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_build_options(p)
    p.add_argument("--calls", type=int, default=80, help="held-out UNet calls to evaluate on (spread over steps)")
    p.add_argument("--out", type=Path, help="output folder (default build/<model>-<target>-sensitivity)")
    p.add_argument("--top", type=int, default=20, help="rows of the ranked table to print")


def run(args: argparse.Namespace) -> int:
    opts = options(args)
    from edgeq.stages.sensitivity import sensitivity_analysis

    res, out = sensitivity_analysis(opts, args.calls, args.out)
    print(f"\nall {len(res['nodes'])} candidate nodes quantized: worst group {min(res['baseline_db']):.2f} dB")
    print(f"{'node':60s} {'op':7s} {'MACs %':>7s} {'float gain dB':>13s} {'alone worst dB':>14s}")
    for r in res["nodes"][: args.top]:
        share = "attn" if r["activation_matmul"] else f"{100 * r['mac_share']:.2f}"
        print(
            f"{r['node'][:60]:60s} {r['op_type']:7s} {share:>7s} {r['float_gain_db']:13.2f} {min(r['alone_db']):14.2f}"
        )
    mp = res.get("mixed_precision")
    if mp:
        state = "met" if mp["met"] else "NOT met"
        print(
            f"\ngoal worst group >= {mp['goal_db']:g} dB: {state} with {len(mp['float_nodes'])} nodes float, "
            f"{100 * mp['curve'][-1]['float_share']:.2f}% of weight-layer MACs float"
        )
    print(f"table, plot and JSON: {out}")
    return 0
