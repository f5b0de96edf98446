"""edgeq bench: per-component latency, peak memory and size of a build, next to its FP32 source.

Each (component, variant) is measured in a fresh process, so its peak RSS is that component's own
(load + runs) and nothing else's. Latency: median, min and max of repeated calls after a warm-up,
with the shapes the pipeline uses (batch 2 for classifier-free guidance, else 1; the build's resolution).
The FP32 baseline runs on the same runtime as the build, with its best float settings (ONNX Runtime
with all graph optimisations; OpenVINO with an explicit f32 hint), so a ratio is INT8 against the
best float the same runtime does.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import EdgeqError
from edgeq.manifest import read_manifest

COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder")


def feeds_for(manifest: dict[str, Any], info: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of one component with the shapes a text-to-image run gives it."""
    p = manifest["pipeline"]
    f = int(p["vae_scale_factor"])
    h, w = p["resolution"]
    from edgeq.runtime.pipeline import uses_cfg

    axes = {
        "batch": 2 if uses_cfg(p) else 1,
        "image_batch": 1,
        "sequence": int(p["max_length"]),
        "height": h // f,
        "width": w // f,
        "image_height": h,
        "image_width": w,
    }
    if manifest["shapes"].get("static"):
        axes.update({k: int(v) for k, v in manifest["shapes"]["axes"].items() if not isinstance(v, str)})
    rng = np.random.default_rng(seed)
    out = {}
    for inp in info["inputs"]:
        shape = tuple(axes[d] if isinstance(d, str) else int(d) for d in inp["shape"])
        if inp["name"] == "timestep":
            out[inp["name"]] = np.full(shape, 500.0, np.dtype(inp["dtype"]))
        elif np.issubdtype(np.dtype(inp["dtype"]), np.integer):
            out[inp["name"]] = np.zeros(shape, inp["dtype"])  # token ids: any valid id times the same
        else:
            out[inp["name"]] = rng.standard_normal(shape).astype(inp["dtype"])
    return out


def _runner(build: Path, manifest: dict[str, Any], component: str, variant: str, float_precision: str | None = None):
    """The component's runner in the build, or its FP32 source graph on the same runtime
    (``float_precision``: the runtime's precision hint for it, where it has one)."""
    from edgeq.runtime.pipeline import default_runner
    from edgeq.targets import for_manifest

    target = for_manifest(manifest)
    if variant == "build":
        info = manifest["components"][component]
        factories = {"onnxruntime": default_runner, **target.runners()}
        return factories[info.get("runtime", "onnxruntime")](build, info), info
    src = Path(manifest["source_export"]["folder"])
    if not src.is_dir():
        raise EdgeqError(f"the FP32 source of {build} ({src}) is gone", "rebuild, which re-exports it into the cache")
    info = read_manifest(src)["components"][component]
    runner = target.float_runner(src / info["path"], manifest, float_precision)
    return (runner or default_runner(src, info)), info


def _child(args: dict[str, Any]) -> dict[str, Any]:
    import resource
    import time

    build = Path(args["build"])
    manifest = read_manifest(build)
    t0 = time.perf_counter()
    if args["component"] == "pipeline":
        from edgeq.runtime.pipeline import GenerateOptions, Pipeline
        from edgeq.targets import for_manifest

        if args["variant"] == "build":
            pipe = Pipeline(build, runners=for_manifest(manifest).runners())
        else:
            pipe = Pipeline(Path(manifest["source_export"]["folder"]))
        load_s = time.perf_counter() - t0

        def call(_):
            return pipe.generate(GenerateOptions(prompt="a red circle", seed=0))

        x = None
    else:
        runner, info = _runner(build, manifest, args["component"], args["variant"], args.get("float_precision"))
        load_s = time.perf_counter() - t0
        x = feeds_for(manifest, info)
        call = runner.run
    for _ in range(args["warmup"]):
        call(x)
    ts = []
    for _ in range(args["repeats"]):
        t1 = time.perf_counter()
        call(x)
        ts.append(time.perf_counter() - t1)
    return {
        "median_s": float(np.median(ts)),
        "min_s": float(np.min(ts)),
        "max_s": float(np.max(ts)),
        "calls": len(ts),
        "load_s": round(load_s, 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
    }


def measure(
    build: Path, component: str, variant: str, repeats: int, warmup: int, float_precision: str | None = None
) -> dict[str, Any]:
    """One measurement in a fresh interpreter (clean peak memory)."""
    args = {"build": str(build), "component": component, "variant": variant, "repeats": repeats, "warmup": warmup}
    args["float_precision"] = float_precision
    code = "import sys; from edgeq.bench import _child_main; _child_main(sys.argv[1])"
    r = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True)
    line = next((x for x in r.stdout.splitlines()[::-1] if x.startswith(("RESULT ", "USER-ERROR "))), None)
    if line is not None and line.startswith("USER-ERROR "):
        e = json.loads(line[len("USER-ERROR ") :])
        raise EdgeqError(f"bench {component} ({variant}): {e['message']}", e["hint"])
    if r.returncode != 0 or line is None:
        raise RuntimeError(f"bench {component} ({variant}) failed:\n{r.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def _child_main(args: str) -> None:
    """Entry of the measuring process: one RESULT line, or one USER-ERROR line for an EdgeqError."""
    try:
        print("\nRESULT " + json.dumps(_child(json.loads(args))))
    except EdgeqError as e:
        print("\nUSER-ERROR " + json.dumps({"message": e.message, "hint": e.hint}))


def _component_bytes(manifest: dict[str, Any], component: str) -> int:
    return sum(a["bytes"] for p, a in manifest["artifacts"].items() if p.startswith(component + "/"))


FLOAT_PRECISIONS = ("f32", "bf16", "f16")


def bench(
    build: Path,
    repeats: int = 20,
    warmup: int = 3,
    pipeline: bool = True,
    log=print,
    float_precision: str | None = None,
) -> dict[str, Any]:
    """``float_precision``: the OpenVINO precision hint of the FP32 baseline (default f32; bf16 where
    the CPU has it is OpenVINO's own default, and the fastest float it runs there)."""
    from edgeq.manifest import library_versions

    manifest = read_manifest(build)
    if float_precision is not None:
        if float_precision not in FLOAT_PRECISIONS:
            raise EdgeqError(
                f"--float-precision {float_precision!r} is not one of {', '.join(FLOAT_PRECISIONS)}",
                "give f32, bf16 or f16",
            )
        if manifest.get("target") != "openvino":
            raise EdgeqError(
                f"--float-precision: {build} is a {manifest.get('target')} build, whose runtime has no precision hint",
                "leave --float-precision out (it is for openvino builds)",
            )
    if manifest.get("kind") != "int8":
        raise EdgeqError(
            f"{build} is an FP32 export", "bench a folder made by `edgeq build`; its FP32 source comes along"
        )
    if "folder" not in manifest.get("source_export", {}):
        raise EdgeqError(f"{build} was built by an older edgeq that did not record its FP32 source", "rebuild it")
    src_manifest = read_manifest(Path(manifest["source_export"]["folder"]))
    rows: dict[str, Any] = {}
    names = [c for c in COMPONENTS if c in manifest["components"]] + (["pipeline"] if pipeline else [])
    for comp in names:
        row: dict[str, Any] = {}
        for variant in ("fp32", "build"):
            n = max(1, repeats // 10) if comp == "pipeline" else repeats
            w = 1 if comp == "pipeline" else warmup
            log(f"bench {comp} ({variant}): {w} warm-up + {n} calls ...")
            row[variant] = measure(build, comp, variant, n, w, float_precision if variant == "fp32" else None)
        if comp != "pipeline":
            row["fp32"]["bytes"] = _component_bytes(src_manifest, comp)
            row["build"]["bytes"] = _component_bytes(manifest, comp)
            row["build"]["precision"] = manifest["components"][comp].get("precision")
        row["speedup"] = row["fp32"]["median_s"] / row["build"]["median_s"]
        rows[comp] = row
    return {
        "build": str(build),
        "target": manifest["target"],
        "model": manifest["model"]["name"],
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": _cpus()},
        "versions": library_versions(),
        "settings": {"repeats": repeats, "warmup": warmup, "float_precision": float_precision},
        "components": rows,
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['model']} -> {result['target']}: median / min / max ms over "
        f"{result['settings']['repeats']} calls after {result['settings']['warmup']} warm-up "
        f"({result['machine']['processor']}, {result['machine']['cpus']} CPUs)"
        + (
            f"; FP32 with OpenVINO's {result['settings']['float_precision']} precision hint"
            if result["settings"].get("float_precision")
            else ""
        ),
        "",
        "| component | FP32 ms (median / min / max) | build ms (median / min / max) | speed-up | FP32 peak GB | build peak GB | FP32 MB | build MB |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def ms(r):
        return f"{r['median_s'] * 1e3:.1f} / {r['min_s'] * 1e3:.1f} / {r['max_s'] * 1e3:.1f}"

    for comp, row in result["components"].items():
        a, b = row["fp32"], row["build"]
        size = (f"{a['bytes'] / 2**20:.1f}", f"{b['bytes'] / 2**20:.1f}") if "bytes" in a else ("-", "-")
        lines.append(
            f"| {comp} | {ms(a)} | {ms(b)} | {row['speedup']:.2f}x | {a['peak_rss_gb']:.2f} | "
            f"{b['peak_rss_gb']:.2f} | {size[0]} | {size[1]} |"
        )
    return "\n".join(lines) + "\n"
