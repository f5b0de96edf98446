"""edgeq quantize MODEL --out DIR: everything up to a packaged build, without the end-to-end checks."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeq.cli.build_cmd import add_build_options, options


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_build_options(p)
    p.add_argument("--out", type=Path, help="build folder (default build/<model>-<target>)")


def run(args: argparse.Namespace) -> int:
    opts = options(args)
    from edgeq.build import build

    out = build(opts, until="quantize").folder
    print(f"wrote {out} (status: unchecked); run `edgeq check {out}` for the accuracy gates")
    return 0
