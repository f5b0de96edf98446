"""What a TensorRT build folder holds: TensorRT's graphs, their rule reports, shape profiles, trtexec.sh."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgeq.errors import EdgeqError
from edgeq.targets.common import graphs_of, onnx_layout
from edgeq.targets.tensorrt import rules
from edgeq.targets.tensorrt.lowering import to_trt_onnx
from edgeq.targets.tensorrt.options import TrtOptions

SIMULATED = "tensorrt-simulated"  # manifest runtime until engines exist: ONNX Runtime runs TensorRT's graphs


def shape_profiles(manifest: dict[str, Any], opts: TrtOptions) -> dict[str, dict[str, list[list[int]]]]:
    """Per component and input: [min, opt, max] shapes from the batch and resolution ranges."""
    p = manifest["pipeline"]
    res = p["resolution"]
    f = int(p["vae_scale_factor"])
    step = f * 8  # keeps every UNet level's feature map an integer size
    out: dict[str, dict[str, list[list[int]]]] = {}
    axes_static = manifest["shapes"].get("axes", {}) if manifest["shapes"].get("static") else None

    def side(px: int, scale: float) -> int:
        return max(step, int(round(px * scale / step)) * step)

    for name, info in manifest["components"].items():
        shapes: dict[str, list[list[int]]] = {}
        for inp in info.get("inputs", []):
            dims3: list[list[int]] = [[], [], []]
            for d in inp["shape"]:
                for k in range(3):
                    if isinstance(d, int):
                        v = d
                    elif axes_static is not None and d in axes_static:
                        v = int(axes_static[d])
                    elif d == "batch":
                        v = (1, 2 * opts.batch[1], 2 * opts.batch[2])[k]
                    elif d == "image_batch":
                        v = opts.batch[k]
                    elif d == "sequence":
                        v = int(p["max_length"])
                    elif d in ("height", "image_height"):
                        v = side(res[0], opts.resolution_scale[k]) // (f if d == "height" else 1)
                    elif d in ("width", "image_width"):
                        v = side(res[1], opts.resolution_scale[k]) // (f if d == "width" else 1)
                    else:
                        raise EdgeqError(f"{name}.{inp['name']}: unknown axis {d!r} for a TensorRT profile")
                    dims3[k].append(v)
            if inp["shape"]:
                shapes[inp["name"]] = dims3
        out[name] = shapes
    return out


def trtexec_script(manifest: dict[str, Any], opts: TrtOptions) -> str:
    """The same engines with ``trtexec``: one command per graph, run from the build folder."""
    lines = [
        "#!/usr/bin/env bash",
        "# Engines for this build with trtexec (TensorRT 10.x/11.x), run from the build folder on the GPU",
        "# machine. `edgeq engines .` does the same through the Python API and then runs the GPU checks.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
    ]
    profiles = shape_profiles(manifest, opts)
    for name, info in manifest["components"].items():
        shapes = profiles.get(name, {})
        for g in graphs_of(info):
            onnx_path = g["path"]
            plan = str(Path(onnx_path).with_suffix(".plan"))
            args = [
                "trtexec",
                f"--onnx={onnx_path}",
                f"--saveEngine={plan}",
                "--stronglyTyped",
                "--timingCacheFile=timing.cache",
                f"--memPoolSize=workspace:{int(opts.workspace_gib * 1024)}M",
                f"--builderOptimizationLevel={opts.builder_optimization_level}",
            ]
            if shapes:
                for flag, k in (("min", 0), ("opt", 1), ("max", 2)):
                    args.append(
                        f"--{flag}Shapes=" + ",".join(f"{i}:{'x'.join(map(str, s[k]))}" for i, s in shapes.items())
                    )
            lines.append(" \\\n  ".join(args))
    return "\n".join(lines) + "\n"


def package(
    ctx, stage: Path, unet, mode: str, vae_dir: Path | None, opts: TrtOptions
) -> tuple[list[Path], dict[str, Any]]:
    """ONNX Runtime's layout first (temporary), then every graph rewritten as TensorRT's graph.

    Each graph is checked against TensorRT's Q/DQ rules (``trt_rules.txt``; the count goes into
    the manifest, where a gate reads it).
    """
    tmp, files, comps = onnx_layout(ctx, stage, unet, mode, vae_dir)
    profiles = shape_profiles({**ctx.export_manifest, "components": comps}, opts)
    rules_text = []
    excl = tuple(e.pattern for e in ctx.profile.policy("unet").exclude)
    for name, info in comps.items():
        violations = 0
        by_rule: dict[str, int] = {}
        for g in graphs_of(info):
            dst = stage / g["path"]
            to_trt_onnx(tmp / g["path"], dst, opts)
            files.append(dst)
            if dst.with_name(dst.name + "_data").exists():
                files.append(dst.with_name(dst.name + "_data"))
            found = rules.validate_file(dst, excl if name == "unet" else ())
            rules_text.append(f"== {g['path']}\n{rules.report(found)}")
            violations += len(found)
            for v in found:
                by_rule[v.rule] = by_rule.get(v.rule, 0) + 1
        int8 = "int8" in info.get("precision", "")
        info["precision"] = (
            f"int8 Q/DQ (TensorRT flavour) + {opts.float_precision}" if int8 else opts.float_precision
        ) + (", one graph per timestep group" if "graphs" in info else "")
        info["runtime"] = SIMULATED
        info["tensorrt"] = {
            "float_precision": opts.float_precision,
            "keep_fp32": list(opts.keep_fp32),
            "profile_shapes": profiles.get(name, {}),
        }
        info["rule_violations"] = {"count": violations, "by_rule": by_rule, "rules": "tensorrt"}
        comps[name] = info
    shutil.rmtree(tmp)
    (stage / "trt_rules.txt").write_text("".join(rules_text))
    (stage / "trtexec.sh").write_text(trtexec_script({**ctx.export_manifest, "components": comps}, opts))
    (stage / "trtexec.sh").chmod(0o755)
    files += [stage / "trt_rules.txt", stage / "trtexec.sh"]
    return files, comps
