"""edgeq bench BUILD_DIR: latency, peak memory and size per component, next to the FP32 source."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("build", type=Path, help="a folder made by `edgeq build`")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per component (pipeline: a tenth)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-pipeline", action="store_true", help="skip the whole text-to-image run")
    p.add_argument("--out", type=Path, help="JSON file for the figures (default BUILD_DIR/bench.json)")
    p.add_argument(
        "--float-precision",
        help="openvino builds: the precision hint of the FP32 baseline, f32 (default), bf16 (OpenVINO's own "
        "default where the CPU has it) or f16",
    )


def run(args: argparse.Namespace) -> int:
    from edgeq.bench import bench, table
    from edgeq.errors import EdgeqError
    from edgeq.fsutil import write_json

    if args.repeats < 1 or args.warmup < 0:
        raise EdgeqError("--repeats must be at least 1 and --warmup at least 0")
    result = bench(
        args.build, args.repeats, args.warmup, pipeline=not args.no_pipeline, float_precision=args.float_precision
    )
    text = table(result)
    print(text)
    out = args.out or args.build / "bench.json"
    write_json(out, result)
    out.with_suffix(".md").write_text(text)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0
