"""edgeq calibrate MODEL: export (cached), capture calibration trajectories, streaming statistics."""

from __future__ import annotations

import argparse

from edgeq.cli.build_cmd import add_build_options, options


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_build_options(p)


def run(args: argparse.Namespace) -> int:
    opts = options(args)
    from edgeq.build import build

    build(opts, until="calibrate")
    print("calibration statistics are cached; `edgeq quantize` or `edgeq build` with the same options reuses them")
    return 0
