"""edgeq check BUILD_DIR: the accuracy checks and gates of a quantized build, against FP32."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgeq.cli.build_cmd import GATE_FAILED


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("build", type=Path, help="a folder made by `edgeq build` or `edgeq quantize`")


def run(args: argparse.Namespace) -> int:
    from edgeq.build import check_folder

    rep = check_folder(args.build)
    print(f"{'PASSED' if rep.passed else 'FAILED'}: report in {args.build / 'report.html'}")
    for g in rep.failed_gates():
        where = f" group {g['group']}" if g["group"] is not None else ""
        print(
            f"edgeq check: gate failed: {g['component']}{where} {g['metric']} = {g['value']:.4g} "
            f"(threshold {g['threshold']:g})",
            file=sys.stderr,
        )
    return 0 if rep.passed else GATE_FAILED
