"""edgeq validate PATH: TensorRT's Q/DQ rules, node by node, on a graph or every graph of a build."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeq.errors import EdgeqError

VIOLATIONS = 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="an .onnx file, or a build folder (every Q/DQ graph in it)")
    p.add_argument("--limit", type=int, default=50, help="violations listed per graph (all are counted)")


def run(args: argparse.Namespace) -> int:
    from edgeq.targets.tensorrt.rules import report, validate_file

    if args.path.is_dir():
        graphs = sorted(p for p in args.path.rglob("*.onnx") if not any(part.startswith(".") for part in p.parts))
    elif args.path.suffix == ".onnx" and args.path.is_file():
        graphs = [args.path]
    else:
        raise EdgeqError(
            f"{args.path} is neither an .onnx file nor a build folder", "give a model.onnx or a build folder"
        )
    if not graphs:
        raise EdgeqError(f"no .onnx graphs under {args.path}")
    total = 0
    for g in graphs:
        found = validate_file(g)
        total += len(found)
        print(f"== {g}\n{report(found, args.limit)}", end="")
    return VIOLATIONS if total else 0
