"""Engines on an NVIDIA GPU with the ``tensorrt`` package: availability, GPU identity, timing cache, builds.

``tensorrt`` and ``cuda-python`` are imported inside the functions only.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from edgeq.errors import EdgeqError
from edgeq.targets.base import ENGINES_NOT_BUILT
from edgeq.targets.common import graphs_of
from edgeq.targets.tensorrt.options import TrtOptions
from edgeq.targets.tensorrt.packaging import shape_profiles

ENGINE = "tensorrt"  # manifest runtime of a component whose engines are built
INSTALL = "pip install 'edgeq[tensorrt]' on a machine with an NVIDIA GPU and driver"


class EnginesNotBuilt(EdgeqError):
    """The TensorRT-ready ONNX and the CPU-simulated report are written; engines need a GPU."""

    exit_code = ENGINES_NOT_BUILT


def unavailable_reason() -> str | None:
    """Why engines cannot be built here, or None when TensorRT and a GPU are present."""
    try:
        import tensorrt as trt
    except ImportError:
        return f"the tensorrt package is not installed ({INSTALL})"
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
        if builder is None:
            return "TensorRT found no usable NVIDIA GPU"
    except Exception as e:  # TensorRT raises plain errors when CUDA cannot start
        return f"TensorRT cannot start CUDA here ({e})"
    try:
        load_cudart()
    except ImportError:
        return "the cuda-python package is not installed (pip install cuda-python)"
    return None


def load_cudart():
    """cuda-python's runtime API module (its import path changed in 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # cuda-python < 12.6
    return cudart


def cuda_check(result):
    """cuda-python returns (err, *values); raise on an error, give back the values."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


def gpu_identity() -> dict[str, str]:
    """The current GPU's name and compute capability (what an engine is tied to)."""
    cudart = load_cudart()
    dev = cuda_check(cudart.cudaGetDevice())
    props = cuda_check(cudart.cudaGetDeviceProperties(dev))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name.strip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}


def timing_cache_path() -> Path:
    """The timing cache shared by builds on this machine, per TensorRT version and compute capability."""
    import tensorrt as trt

    cc = gpu_identity()["compute_capability"]
    root = Path(os.environ.get("EDGEQ_CACHE", Path.home() / ".cache" / "edgeq")) / "tensorrt"
    return root / f"timing-trt{trt.__version__}-sm{cc.replace('.', '')}.cache"


def build_engine(
    onnx_path: Path, plan: Path, shapes: dict[str, list[list[int]]], opts: TrtOptions, cache: Path, log=print
) -> dict[str, Any]:
    """One engine through the Python API: strongly typed, profile shapes, shared timing cache."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # explicit on 10.x, the default on 11.x
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgeqError(f"TensorRT cannot parse {onnx_path}: {errs}", "report the model, edgeq and TensorRT versions")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gib * (1 << 30)))
    config.builder_optimization_level = opts.builder_optimization_level
    if shapes:
        profile = builder.create_optimization_profile()
        for name, (lo, mid, hi) in shapes.items():
            profile.set_shape(name, lo, mid, hi)
        config.add_optimization_profile(profile)
    note = ""
    blob = cache.read_bytes() if cache.is_file() else b""
    try:
        tc = config.create_timing_cache(blob)
        cache_ok = tc is not None and config.set_timing_cache(tc, ignore_mismatch=False)
    except Exception:  # TensorRT raises on a damaged cache in some versions, returns None in others
        cache_ok = False
    if not cache_ok:
        note = f"timing cache {cache} was unreadable; built with an empty one"
        log(f"warning: {note}")
        tc = config.create_timing_cache(b"")
        config.set_timing_cache(tc, ignore_mismatch=False)
    t0 = time.time()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgeqError(f"TensorRT could not build an engine from {onnx_path}", "see TensorRT's log above")
    seconds = time.time() - t0
    tmp = plan.with_name(plan.name + ".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(plan)
    cache.parent.mkdir(parents=True, exist_ok=True)
    ctmp = cache.with_name(cache.name + ".tmp")
    ctmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    ctmp.replace(cache)
    return {"build_seconds": round(seconds, 1), "bytes": plan.stat().st_size, "timing_cache_note": note}


def recorded_options(manifest: dict[str, Any], folder: Path) -> TrtOptions:
    """The ``[tensorrt]`` options a build folder was made with (its manifest keeps the raw profile)."""
    return TrtOptions.from_profile(manifest["quantization"]["profile"].get("tensorrt", {}), str(folder))


def build_engines(folder: Path, opts: TrtOptions | None = None, log=print) -> dict[str, Any]:
    """Engines for every component of a TensorRT build folder; updates its manifest.

    ``opts``: the build's ``[tensorrt]`` options (default: those its manifest records).
    """
    from edgeq.manifest import artifact_table, read_manifest, write_manifest

    reason = unavailable_reason()
    if reason:
        raise EnginesNotBuilt(f"engines need an NVIDIA GPU with TensorRT: {reason}", INSTALL)
    import tensorrt as trt

    manifest = read_manifest(folder)
    if not all("tensorrt" in info for info in manifest["components"].values()):
        raise EdgeqError(f"{folder} is a {manifest.get('target')} build", "engines are built for --target tensorrt")
    opts = opts or recorded_options(manifest, folder)
    ident = gpu_identity()
    cache = timing_cache_path()
    local = folder / "timing.cache"
    if local.is_file() and not cache.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local, cache)
    profiles = shape_profiles(manifest, opts)
    summary: dict[str, Any] = {}
    new_files = []
    for name, info in manifest["components"].items():
        for g in graphs_of(info):
            plan = (folder / g["path"]).with_suffix(".plan")
            log(f"building TensorRT engine {plan.relative_to(folder)} ...")
            res = build_engine(folder / g["path"], plan, profiles.get(name, {}), opts, cache, log)
            g["engine"] = str(plan.relative_to(folder))
            new_files.append(g["engine"])
            summary[g["engine"]] = res
            log(f"  {res['bytes'] / 2**20:.1f} MiB in {res['build_seconds']:.1f} s")
        info["runtime"] = ENGINE
        info["tensorrt"].update(version=trt.__version__, **ident)
    shutil.copy2(cache, local)
    new_files.append("timing.cache")
    manifest["artifacts"].update(artifact_table(folder, new_files))
    manifest["engines"] = summary
    write_manifest(folder, manifest)
    return summary


def engines_and_status(folder: Path, opts: TrtOptions | None = None, log=print) -> dict[str, Any]:
    """Build the engines of a build folder and record it: `edgeq engines` and the build's last stage."""
    from edgeq.manifest import read_manifest, write_manifest

    t0 = time.time()
    build_engines(folder, opts, log)
    manifest = read_manifest(folder)
    ident = gpu_identity()
    manifest["engines_status"] = {
        "built": True,
        "checks": f"TensorRT engines on {ident['gpu']} (compute capability {ident['compute_capability']})",
        "build_seconds": round(time.time() - t0, 1),
        "engines": manifest.get("engines", {}),
    }
    write_manifest(folder, manifest)
    return manifest["engines_status"]
