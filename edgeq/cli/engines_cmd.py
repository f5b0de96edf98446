"""edgeq engines BUILD_DIR: compile a build's device engines (TensorRT: on an NVIDIA GPU), then check them."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "build", type=Path, help="a folder made by `edgeq build` for an engine target (copied here as a whole)"
    )


def run(args: argparse.Namespace) -> int:
    from edgeq.cli.build_cmd import exit_code
    from edgeq.errors import EdgeqError
    from edgeq.manifest import read_manifest
    from edgeq.stages.checks import check_folder
    from edgeq.targets import for_manifest

    target = for_manifest(read_manifest(args.build))
    if not target.compiles_on_device:
        raise EdgeqError(
            f"{args.build} was built for the {target.name} target, which compiles nothing on the device",
            "edgeq engines finishes builds of engine targets (e.g. `edgeq build --target tensorrt MODEL`)",
        )
    status = target.build_engines(args.build)
    print(f"engines built in {status['build_seconds']} s; {status['checks']}")
    rep = check_folder(args.build)
    print(f"{'PASSED' if rep.passed else 'FAILED'}: report in {args.build / 'report.html'}")
    return exit_code(rep, "engines")
