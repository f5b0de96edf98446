"""edgeq engines BUILD_DIR: finish a TensorRT build on a machine with an NVIDIA GPU."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("build", type=Path, help="a folder made by `edgeq build --target tensorrt` (copied here as a whole)")


def run(args: argparse.Namespace) -> int:
    from edgeq.build import check_folder
    from edgeq.cli.build_cmd import exit_code
    from edgeq.errors import EdgeqError
    from edgeq.manifest import read_manifest
    from edgeq.targets.tensorrt import engines_and_status

    if read_manifest(args.build).get("target") != "tensorrt":
        raise EdgeqError(f"{args.build} is not a TensorRT build", "make one with `edgeq build --target tensorrt MODEL`")
    status = engines_and_status(args.build)
    print(f"engines built in {status['build_seconds']} s; {status['checks']}")
    rep = check_folder(args.build)
    print(f"{'PASSED' if rep.passed else 'FAILED'}: report in {args.build / 'report.html'}")
    return exit_code(rep, "engines")
