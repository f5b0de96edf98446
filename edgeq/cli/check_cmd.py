"""edgeq check BUILD_DIR: the accuracy checks and gates of a quantized build, against FP32."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeq.cli.build_cmd import exit_code


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("build", type=Path, help="a folder made by `edgeq build` or `edgeq quantize`")


def run(args: argparse.Namespace) -> int:
    from edgeq.stages.checks import check_folder

    rep = check_folder(args.build)
    print(f"{'PASSED' if rep.passed else 'FAILED'}: report in {args.build / 'report.html'}")
    return exit_code(rep, "check")
