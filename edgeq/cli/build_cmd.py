"""edgeq build --target TARGET MODEL"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgeq.profiles.schema import CPU_FAMILIES

GATE_FAILED = 3


def add_build_options(p: argparse.ArgumentParser) -> None:
    """Options shared by build, calibrate and quantize."""
    p.add_argument(
        "model", help="a preset (tiny-sd, tiny-lcm, sd15, sd21, sdxl, lcm-sd15, sd-turbo, ...) or a diffusers folder"
    )
    p.add_argument("--target", default="ort-cpu", help="target profile name or a .toml file (default: ort-cpu)")
    p.add_argument(
        "--cpu",
        choices=CPU_FAMILIES,
        help="CPU targets: the int8 kernel family to build and check for (default: the profile's [cpu] family, "
        "host = this machine's; portable = 7-bit weights, exact on every family)",
    )
    p.add_argument("--weights", type=Path, help="a diffusers folder or single-file checkpoint for the preset")
    p.add_argument(
        "--config", type=Path, dest="config_dir", help="configs/tokenizer folder for a single-file checkpoint"
    )
    p.add_argument(
        "--steps",
        type=int,
        help="denoising steps the deployable runs by default, and calibration captures at: calibrate at the "
        "schedule you will run (default: the model's, e.g. 4 for LCM and Turbo models)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        help="guidance scale the deployable runs by default and calibration uses (default: the model's; "
        "Turbo: 0, LCM: embedded in the UNet)",
    )
    p.add_argument(
        "--height",
        type=int,
        help="image height in pixels the build exports, calibrates, checks and deploys (default: the model's, "
        "e.g. 1024 for SDXL; 512 as SDXL-Turbo runs)",
    )
    p.add_argument("--width", type=int, help="image width in pixels (default: the model's)")
    p.add_argument(
        "--groups",
        type=int,
        help="timestep groups, at most --steps; with a few-step model every step can be its own group "
        "(1 = classic calibration; default: the profile's, capped at the step count)",
    )
    p.add_argument(
        "--group-mode",
        choices=("shared", "per-group", "gains", "auto"),
        help="one graph with ranges good for all groups; one graph per group; one graph whose scales follow the "
        "group through a small runtime input (gains); or auto: grouping only where it helps, gains where they "
        "match the per-group graphs",
    )
    p.add_argument(
        "--grouping", choices=("uniform", "profile"), help="equal step counts, or merge steps with alike ranges"
    )
    p.add_argument(
        "--range-method",
        choices=("minmax", "percentile", "mse", "entropy", "auto"),
        help="activation range selection; auto: per tensor class, the method among min-max, percentile and MSE "
        "clipping that measures best in the fake-quant simulation (default: the profile's)",
    )
    p.add_argument(
        "--goal-sqnr",
        type=float,
        dest="goal_sqnr_db",
        help="mixed precision: leave float the fewest UNet nodes, by measured sensitivity, that bring the worst "
        "timestep group to this SQNR in dB (default: the profile's goal_sqnr_db, or off)",
    )
    p.add_argument("--calib-prompts", type=Path, help="calibration prompt file (default: calibration_data/<model>/)")
    p.add_argument(
        "--num-calib", type=int, help="calibration prompts to use (default: 32 for tiny-sd, 2 for full-size models)"
    )
    p.add_argument(
        "--calib-calls",
        type=int,
        help="captured UNet calls the statistics use, spread evenly over steps and prompts "
        "(default: all for tiny-sd, 32 for full-size models)",
    )
    p.add_argument("--heldout-prompts", type=Path, help="held-out prompt file for the accuracy checks")
    p.add_argument("--num-heldout", type=int, help="held-out prompts to use (default 64 for tiny-sd, else 1)")
    p.add_argument("--seed", type=int, default=0, help="calibration seeds are seed + prompt index")
    p.add_argument("--cache-dir", type=Path, help="where cached stages live (default build/.cache/<model>-<hash>)")
    p.add_argument(
        "--max-memory",
        type=float,
        dest="max_memory_gb",
        metavar="GB",
        help="memory ceiling for the statistics: where one call's calibrated activations would not fit beside the "
        "model, they run in several passes over the calls, each with part of the tensors (same statistics, "
        "more time; default: the memory the system has free)",
    )
    p.add_argument(
        "--cluster",
        help="capture and statistics on Ray: `ray` (a local Ray with this machine's cores), HOST:PORT of a running "
        "cluster this machine is part of, or ray://HOST:PORT (Ray Client); same results as one process",
    )


def options(args: argparse.Namespace):
    """The command's options; a bad profile or a missing runtime fails here, before any heavy import."""
    from edgeq.stages.config import BuildOptions
    from edgeq.targets import get_target

    opts = BuildOptions(**{k: getattr(args, k) for k in BuildOptions.__dataclass_fields__ if hasattr(args, k)})
    get_target(opts.target)
    if opts.cluster is not None:
        from edgeq.stages.cluster import ClusterSpec

        ClusterSpec.parse(opts.cluster)
    return opts


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_build_options(p)
    p.add_argument("--out", type=Path, help="build folder (default build/<model>-<target>)")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved build plan (options, profile and preset defaults settled) as JSON and exit",
    )
    p.add_argument(
        "--onnx-only",
        action="store_true",
        help="targets that compile on the device (TensorRT): stop at the engine-ready graphs and simulated checks, exit 0",
    )


def run(args: argparse.Namespace) -> int:
    opts = options(args)
    from edgeq.build import build, print_config

    if args.print_config:
        print(json.dumps(print_config(opts), indent=2))
        return 0
    print("resolved options: " + json.dumps(opts.to_dict()))
    res = build(opts)
    rep, out = res.report, res.folder
    print(
        f"\n{'PASSED' if rep.passed else 'FAILED'}: {rep.model} -> {rep.target} in {out} (group mode {rep.group_mode})"
    )
    for row in rep.unet_groups:
        print(
            f"  unet group {row['index']} (t {row['t_min']:.0f}-{row['t_max']:.0f}): SQNR {row['sqnr_db']:.2f} dB, "
            f"cosine {row['cosine']:.5f}"
        )
    e = rep.e2e
    print(
        f"  end to end: PSNR {e['psnr_db']:.2f} dB, SSIM {e['ssim']:.4f}"
        + (
            f", adherence colour {e['adherence']['colour']:.1f}% / shape {e['adherence']['shape']:.1f}% "
            f"(FP32 {e['adherence_fp32']['colour']:.1f}% / {e['adherence_fp32']['shape']:.1f}%)"
            if "adherence" in e
            else ""
        )
    )
    print(f"  report: {out / 'report.html'}")
    return exit_code(rep, "build") or engines_exit_code(rep, opts.onnx_only)


def engines_exit_code(rep, onnx_only: bool) -> int:
    """Engine targets: a build that passed but has no engines says why and how to finish (exit 4)."""
    e = rep.engines
    if not e:
        return 0
    print(f"  checks: {e.get('checks')}")
    if e.get("built") or onnx_only:
        return 0
    from edgeq.targets.base import ENGINES_NOT_BUILT

    print(
        f"edgeq build: engines not built: {e.get('reason')}. The engine-ready graphs, quant plan and simulated "
        f"report are written.\n  finish: {e.get('finish')}\n  (--onnx-only makes this a success)",
        file=sys.stderr,
    )
    return ENGINES_NOT_BUILT


def exit_code(rep, command: str) -> int:
    """Name every failed gate on stderr; GATE_FAILED if any failed, else 0."""
    for g in rep.failed_gates():
        where = f" group {g['group']}" if g["group"] is not None else ""
        print(
            f"edgeq {command}: gate failed: {g['component']}{where} {g['metric']} = {g['value']:.4g} "
            f"(threshold {g['threshold']:g})",
            file=sys.stderr,
        )
    return 0 if rep.passed else GATE_FAILED
