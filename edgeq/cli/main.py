"""The ``edgeq`` command line: a thin layer over the API, one module per command.

Start-up imports nothing heavy: torch, diffusers and the target runtimes load inside the command
that needs them, so ``edgeq run`` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from edgeq import __version__
from edgeq.errors import EdgeqError

COMMANDS = {
    "build": "Export, calibrate per timestep group, quantize, lower for a target, check accuracy, report.",
    "calibrate": "Export (cached), capture calibration trajectories and collect timestep-grouped statistics.",
    "quantize": "Calibrate, choose ranges, insert Q/DQ and package for a target, without the accuracy checks.",
    "sensitivity": "Rank the UNet's quantizable nodes by the error each adds, per timestep group (and mixed precision).",
    "check": "Run the accuracy checks and gates of a quantized build against FP32.",
    "engines": "Compile the device engines of a build folder on its device (TensorRT: an NVIDIA GPU), then check them.",
    "bench": "Latency, peak memory and size per component of a build, next to its FP32 source.",
    "validate": "Check a Q/DQ graph (or a build folder) against TensorRT's Q/DQ rules, node by node.",
    "export": "Export a model to ONNX: a runnable FP32 build folder.",
    "run": "Generate an image from a build folder (no torch needed).",
    "models": "List the model presets and where their weights were found.",
    "targets": "List the deployment targets and whether their runtime is installed.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeq", description="Diffusion models to fast, checked INT8 deployables.")
    parser.add_argument("--version", action="version", version=f"edgeq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        mod = importlib.import_module(f"edgeq.cli.{name}_cmd")
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except EdgeqError as e:
        print(f"edgeq {args.command}: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"  fix: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("edgeq: interrupted; partial outputs were removed", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())
