"""edgeq run BUILD_DIR --prompt TEXT -o out.png"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from edgeq.errors import EdgeqError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgeq.runtime import SCHEDULERS

    p.add_argument("build", type=Path, help="a build folder (from edgeq export or edgeq build)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument(
        "--low-memory",
        action="store_true",
        help="hold one stage at a time (text encoders, then UNet, then VAE decoder): the peak is the "
        "largest stage's, not the sum; the same time for one image",
    )
    p.add_argument("-o", "--output", type=Path, default=Path("out.png"), help="PNG file to write")


def run(args: argparse.Namespace) -> int:
    from edgeq.runtime.pipeline import GenerateOptions, Pipeline, save_png

    if args.output.suffix.lower() != ".png":
        raise EdgeqError(f"output {args.output} is not a .png file", "give -o NAME.png")
    from edgeq.manifest import read_manifest
    from edgeq.targets import for_manifest

    t0 = time.time()
    manifest = read_manifest(args.build)
    from edgeq.runtime.cpu import family_warning

    warning = family_warning(manifest)
    if warning:
        print(f"edgeq run: warning: {warning}", file=sys.stderr)
    runners = for_manifest(manifest).runners() if manifest.get("target") else None
    pipe = Pipeline(args.build, runners=runners, low_memory=args.low_memory)
    t1 = time.time()
    img = pipe.generate(
        GenerateOptions(
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            seed=args.seed,
            steps=args.steps,
            guidance=args.guidance,
            scheduler=args.scheduler,
            height=args.height,
            width=args.width,
        )
    )
    try:
        save_png(img, args.output)
    except OSError as e:
        raise EdgeqError(f"cannot write {args.output}: {e.strerror}", "choose a writable output path") from None
    took = f"in {time.time() - t1:.2f} s (load {t1 - t0:.2f} s)"
    if args.low_memory:  # the components load as they are needed, inside the generation
        took = f"in {time.time() - t0:.2f} s, loads included"
    print(f"wrote {args.output} ({img.shape[1]}x{img.shape[0]}) {took}")
    return 0
