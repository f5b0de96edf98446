"""edgeq check BUILD_DIR: the build's gates re-run here, on the machine it is deployed to.

Verifies every artifact's sha256, then runs the verification bundle's UNet calls and reference
prompts with the deployed runtime (no torch, no diffusers) and writes ``device_report.json`` and
``device_report.md``. ``--full`` re-runs the build's own checks from its cache instead (the build host).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeq.cli.build_cmd import exit_code


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("build", type=Path, help="a folder made by `edgeq build`")
    p.add_argument(
        "--full",
        action="store_true",
        help="on the build host: re-run every check of the build from its cache (needs edgeq[export])",
    )
    p.add_argument("--calls-only", action="store_true", help="the UNet calls only, no reference images")
    p.add_argument("--report", type=Path, help="where to write device_report.json/.md (default: the build folder)")


def run(args: argparse.Namespace) -> int:
    if args.full:
        from edgeq.stages.checks import check_folder

        rep = check_folder(args.build)
        print(f"{'PASSED' if rep.passed else 'FAILED'}: report in {args.build / 'report.html'}")
        return exit_code(rep, "check")
    from edgeq.verify.device import device_check, write_report

    res = device_check(args.build, images=not args.calls_only)
    path = write_report(args.build, res, args.report)
    for n in res.notes:
        print(f"note: {n}")
    gaps = ", ".join(f"{g.gap_db:.2f}" for g in res.groups)
    print(
        f"{'PASSED' if res.passed else 'FAILED'} on {res.family}: kernel gap per group [{gaps}] dB; "
        f"report in {path.with_suffix('.md')}"
    )
    return exit_code(res, "check")
