#!/usr/bin/env python
"""Time per image of several builds, each with its own deployed runners, called in turn in one
process: medians of the same rounds and paired ratios against the first build (the median over
rounds of the first build's time in that round over this one's), so that the machine's load falls on
all alike. An image is the whole pipeline: text encoder, every UNet call, VAE decoder. Every build
is loaded whole at once, so this is for builds that fit in memory together (tiny-sd, tiny-lcm).

    python tools/bench_images.py build/lcm-a build/lcm-b --steps 4 --rounds 40 --out benchmarks/NAME
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

PROMPT = "a red apple on a wooden table"


def main() -> None:
    from edgeq.manifest import read_manifest
    from edgeq.runtime.cpu import detect
    from edgeq.runtime.pipeline import GenerateOptions, Pipeline
    from edgeq.targets import for_manifest

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("builds", type=Path, nargs="+")
    ap.add_argument("--steps", type=int, help="denoising steps (default: each build's own)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--out", type=Path, help="write OUT.md and OUT.json")
    args = ap.parse_args()
    for b in args.builds:
        if not (b / "manifest.json").is_file():
            sys.exit(f"{b}: not a build folder (no manifest.json); pass folders made by `edgeq build`")
    pipes = [Pipeline(b, runners=for_manifest(read_manifest(b)).runners()) for b in args.builds]
    kw = {"steps": args.steps} if args.steps else {}
    for p in pipes:  # warm-up: compiled models, first-call allocations
        p.generate(GenerateOptions(prompt=PROMPT, seed=0, **kw))
    times: list[list[float]] = [[] for _ in pipes]
    for r in range(args.rounds):
        for k, p in enumerate(pipes):
            t0 = time.perf_counter()
            p.generate(GenerateOptions(prompt=PROMPT, seed=r, **kw))
            times[k].append(time.perf_counter() - t0)
    first = np.asarray(times[0])
    rows = [
        {
            "build": str(b),
            "median_ms": float(np.median(t)) * 1000,
            "paired": float(np.median(first / np.asarray(t))),
            "min_ms": float(np.min(t)) * 1000,
            "max_ms": float(np.max(t)) * 1000,
        }
        for b, t in zip(args.builds, times)
    ]
    steps = f" --steps {args.steps}" if args.steps else ""
    text = (
        f"# Time per image, interleaved\n\n`python tools/bench_images.py {' '.join(map(str, args.builds))}{steps} "
        f"--rounds {args.rounds}`; CPU {detect().describe()}; {time.strftime('%Y-%m-%d')}. One warm-up image "
        "per build, then rounds generating one image with each build in turn; paired: the median over rounds of "
        "the first build's time over this one's.\n\n| build | median ms | min-max ms | paired vs the first |\n"
        "|---|---|---|---|\n"
        + "".join(
            f"| {r['build']} | {r['median_ms']:.2f} | {r['min_ms']:.2f}-{r['max_ms']:.2f} | {r['paired']:.3f}x |\n"
            for r in rows
        )
    )
    print(text)
    if args.out:
        args.out.with_suffix(".md").write_text(text)
        args.out.with_suffix(".json").write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
