"""edgeq export MODEL --out DIR"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeq.errors import EdgeqError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a preset (sd15, sd21, sdxl, tiny-sd) or a diffusers folder")
    p.add_argument("--out", type=Path, default=None, help="build folder to write (default: build/<model>-fp32)")
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="a diffusers folder or a single-file .safetensors/.ckpt checkpoint for the preset",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="for a single-file checkpoint: a diffusers folder with the model's configs and tokenizer",
    )
    p.add_argument("--static", action="store_true", help="fix batch and image size instead of dynamic axes")
    p.add_argument("--batch", type=int, default=2, help="batch for --static (2 = classifier-free guidance)")
    p.add_argument("--height", type=int, default=None, help="image height (default: the model's resolution)")
    p.add_argument("--width", type=int, default=None, help="image width (default: the model's resolution)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (17 or newer)")
    p.add_argument("--no-validate", action="store_true", help="skip the comparison with torch")


def run(args: argparse.Namespace) -> int:
    from edgeq.models.weights import resolve

    if args.opset < 17:
        raise EdgeqError(f"--opset {args.opset} is too old", "use 17 or newer")
    if args.batch < 1:
        raise EdgeqError(f"--batch must be at least 1, got {args.batch}")
    source = resolve(args.model, args.weights, args.config)
    out = args.out or Path("build") / f"{source.spec.name.replace('/', '_').strip('._')}-fp32"
    try:
        from edgeq.frontend.export import ExportSettings, export
    except ImportError as e:
        raise EdgeqError(
            f"exporting needs torch and diffusers ({e.name} is missing)",
            "pip install torch==2.13.0 && pip install 'edgeq[export]'",
        ) from None
    print(f"model: {source.spec.name} ({source.spec.family}) from {source.describe()}")
    settings = ExportSettings(
        opset=args.opset,
        static=args.static,
        batch=args.batch,
        height=args.height,
        width=args.width,
        validate=not args.no_validate,
    )
    result = export(source, out, settings)
    print(f"{'reused' if result.reused else 'wrote'} {result.folder} in {result.seconds:.1f} s")
    return 0
