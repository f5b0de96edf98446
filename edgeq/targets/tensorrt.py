"""TensorRT target: TensorRT-ready ONNX everywhere, INT8 engines where an NVIDIA GPU is.

What the build folder holds, per component (text encoder, UNet, VAE decoder):

* ``<component>/model.onnx`` (+ ``model.onnx_data``): the graph TensorRT builds. The UNet carries the
  TensorRT Q/DQ flavour (symmetric INT8, Q/DQ on the inputs of Conv/MatMul/Gemm only); every float
  op is converted to FP16 in the graph itself (ONNX Runtime's float16 converter), because TensorRT
  11 builds strongly typed networks only: precision comes from the graph, not from builder flags.
  The timestep path up to the sinusoidal projection stays FP32 (``keep_fp32`` in the profile).
* ``trtexec.sh``: the equivalent ``trtexec`` commands (shapes, timing cache, workspace).
* ``trt_rules.txt``: :mod:`edgeq.quantize.trt_rules` run on every graph; a violation fails the build.
* ``<component>/model.plan`` (and ``model.g<i>.plan`` per timestep group) once engines are built, on
  a machine with an NVIDIA GPU and the ``tensorrt`` package; ``timing.cache`` beside them.

Until engines exist, the components run as ``tensorrt-simulated``: ONNX Runtime on the CPU executes
the very graphs TensorRT would build (INT8 Q/DQ arithmetic exactly, FP16 ops where ORT has FP16
kernels), so the gates say what quality to expect before any GPU is involved. Differences left:
TensorRT's kernels (fused conv+bias+activation, FP16 accumulation order, its own GELU/Softmax).

Per-group mode: one engine per timestep group; each engine embeds its own copy of the weights, so
engine size and GPU memory are x groups (on the SD1.5 UNet, about 0.9 GB per INT8 engine).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import EdgeqError
from edgeq.fsutil import save_onnx
from edgeq.runtime.pipeline import default_runner
from edgeq.runtime.sessions import OrtRunner, component_runner, one_or_grouped
from edgeq.targets.common import graphs_of, onnx_layout

ENGINES_NOT_BUILT = 4  # exit code of `edgeq build --target tensorrt` where engines cannot be built
SIMULATED = "tensorrt-simulated"
ENGINE = "tensorrt"
INSTALL = "pip install 'edgeq[tensorrt]' on a machine with an NVIDIA GPU and driver"


class EnginesNotBuilt(EdgeqError):
    """The TensorRT-ready ONNX and the CPU-simulated report are written; engines need a GPU."""

    exit_code = ENGINES_NOT_BUILT


@dataclass(frozen=True)
class TrtOptions:
    """The profile's ``[tensorrt]`` section."""

    batch: tuple[int, int, int] = (1, 1, 4)
    resolution_scale: tuple[float, float, float] = (0.5, 1.0, 2.0)
    workspace_gib: float = 8.0
    builder_optimization_level: int = 3
    float_precision: str = "fp16"
    keep_fp32: tuple[str, ...] = ("^/time_proj/",)

    @classmethod
    def from_profile(cls, raw: dict[str, Any], where: str = "the profile") -> TrtOptions:
        d = dict(raw)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise EdgeqError(f"{where}: unknown keys in [tensorrt]: {', '.join(sorted(unknown))}")
        for k in ("batch", "resolution_scale", "keep_fp32"):
            if k in d:
                d[k] = tuple(d[k])
        opts = cls(**d)
        b, s = opts.batch, opts.resolution_scale
        if len(b) != 3 or not (1 <= b[0] <= b[1] <= b[2]):
            raise EdgeqError(f"{where}: [tensorrt] batch must be [min, opt, max] with 1 <= min <= opt <= max, got {b}")
        if len(s) != 3 or not (0 < s[0] <= s[1] <= s[2]):
            raise EdgeqError(f"{where}: [tensorrt] resolution_scale must be [min, opt, max] > 0, got {s}")
        if opts.float_precision not in ("fp16", "fp32"):
            raise EdgeqError(f"{where}: [tensorrt] float_precision must be fp16 or fp32, not {opts.float_precision!r}")
        return opts


# --- the graph TensorRT builds ---------------------------------------------------------------------


def to_trt_onnx(src: Path, dst: Path, opts: TrtOptions) -> None:
    """Write ``src`` as the strongly typed graph TensorRT builds: float ops in FP16, I/O in FP32.

    ONNX Runtime's float16 converter does the conversion (Q/DQ scales become FP16 too, valid from
    opset 19, so DequantizeLinear feeds an FP16 conv directly). Two mendings: the timestep path
    up to the sinusoidal projection is kept FP32 (the converter would round the timestep to FP16
    on the graph input and cast it back), and the nodes are sorted topologically again.
    """
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src), load_external_data=True)
    if opts.float_precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        keep = _fp32_nodes(model.graph, opts.keep_fp32)
        model = convert_float_to_float16(model, keep_io_types=True, node_block_list=sorted(keep))
        _bypass_input_round_trips(model.graph)
        om = OnnxModel(model)
        om.remove_unused_constant()
        om.prune_graph()
        om.topological_sort()
        model = om.model
    model.producer_name = "edgeq"
    save_onnx(model, dst)


def _fp32_nodes(graph, patterns: tuple[str, ...]) -> set[str]:
    """Nodes matching ``patterns`` and every node they depend on (the timestep broadcast)."""
    prod = {o: n for n in graph.node for o in n.output}
    stack = [n for n in graph.node if any(re.search(p, n.name) for p in patterns)]
    keep: set[str] = set()
    while stack:
        n = stack.pop()
        if n.name in keep:
            continue
        keep.add(n.name)
        stack += [prod[i] for i in n.input if i in prod]
    return keep


def _bypass_input_round_trips(graph) -> None:
    """Cast(FP32 input -> FP16) -> Cast(-> FP32): let the FP32 consumers read the input itself."""
    import onnx

    inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    prod = {o: n for n in graph.node for o in n.output}

    def cast_to(n) -> int | None:
        return next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" else None

    replace = {}
    for n in graph.node:
        if cast_to(n) == onnx.TensorProto.FLOAT and n.input[0] in prod:
            p = prod[n.input[0]]
            if cast_to(p) == onnx.TensorProto.FLOAT16 and p.input[0] in inputs:
                replace[n.output[0]] = p.input[0]
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name in replace:
                n.input[i] = replace[name]


# --- optimization profiles and trtexec --------------------------------------------------------------


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


# --- packaging ----------------------------------------------------------------------------------------


def options(ctx) -> TrtOptions:
    return TrtOptions.from_profile(ctx.profile.runtime_options, str(ctx.profile.path))


def package(ctx, stage: Path, unet, mode: str, vae_dir: Path | None) -> tuple[list[Path], dict[str, Any]]:
    """ONNX Runtime's layout first (temporary), then every graph rewritten as TensorRT's graph."""
    from edgeq.quantize import trt_rules

    opts = options(ctx)
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
            found = trt_rules.validate_file(dst, excl if name == "unet" else ())
            rules_text.append(f"== {g['path']}\n{trt_rules.report(found)}")
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


# --- runners -------------------------------------------------------------------------------------------


def _engine(build: Path, info: dict[str, Any]):
    return component_runner(lambda p: TrtRunner(p, info["tensorrt"]), build, info, key="engine")


def runners() -> dict[str, Any]:
    """Engines where built; until then ONNX Runtime runs the TensorRT graphs (the CPU simulation)."""
    return {SIMULATED: default_runner, ENGINE: _engine}


def unet_runner(ctx, graphs: list[tuple[Path, dict]]):
    """The build's variant checks run the TensorRT graphs (FP16 + Q/DQ) on the CPU: the simulation."""
    opts = options(ctx)
    runners_ = []
    for path, g in graphs:
        key = hashlib.sha256(f"{path.resolve()}|{path.stat().st_mtime_ns}|{opts}".encode()).hexdigest()[:16]
        dst = ctx.cache / f"trt-sim-{key}" / "model.onnx"
        if not dst.is_file():
            shutil.rmtree(dst.parent, ignore_errors=True)
            tmp = dst.parent.with_name(dst.parent.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            to_trt_onnx(path, tmp / "model.onnx", opts)
            tmp.rename(dst.parent)
        runners_.append((OrtRunner(dst), g))
    return one_or_grouped(runners_)


# --- engines (NVIDIA GPU + tensorrt) ------------------------------------------------------------------


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
        _cudart()
    except ImportError:
        return "the cuda-python package is not installed (pip install cuda-python)"
    return None


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # cuda-python < 12.6
    return cudart


def _check(result):
    """cuda-python returns (err, *values); raise on an error, give back the values."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


def gpu_identity() -> dict[str, str]:
    cudart = _cudart()
    dev = _check(cudart.cudaGetDevice())
    props = _check(cudart.cudaGetDeviceProperties(dev))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name.strip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}


def timing_cache_path() -> Path:
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


def build_engines(folder: Path, log=print) -> dict[str, Any]:
    """Engines for every component of a TensorRT build folder; updates its manifest."""
    from edgeq.manifest import artifact_table, read_manifest, write_manifest

    reason = unavailable_reason()
    if reason:
        raise EnginesNotBuilt(f"engines need an NVIDIA GPU with TensorRT: {reason}", INSTALL)
    import tensorrt as trt

    manifest = read_manifest(folder)
    if manifest.get("target") != "tensorrt":
        raise EdgeqError(f"{folder} is a {manifest.get('target')} build", "engines are built for --target tensorrt")
    opts = TrtOptions.from_profile(manifest["quantization"]["profile"].get("tensorrt", {}), str(folder))
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


class TrtRunner:
    """A deserialized engine: numpy in, numpy out, through cuda-python (no torch)."""

    def __init__(self, plan: Path, info: dict[str, Any]):
        import tensorrt as trt

        built = info.get("version")
        if built and built != trt.__version__:
            raise EdgeqError(
                f"{plan} was built with TensorRT {built}, this machine has {trt.__version__}",
                f"rebuild the engines here: edgeq engines {plan.parent.parent}",
            )
        cc = gpu_identity()["compute_capability"]
        if info.get("compute_capability") and info["compute_capability"] != cc:
            raise EdgeqError(
                f"{plan} was built for compute capability {info['compute_capability']}, this GPU is {cc}",
                f"rebuild the engines here: edgeq engines {plan.parent.parent}",
            )
        self.trt = trt
        self.cudart = _cudart()
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise EdgeqError(f"TensorRT could not load {plan}", f"rebuild it: edgeq engines {plan.parent.parent}")
        self.context = self.engine.create_execution_context()
        self.stream = _check(self.cudart.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self._buffers: dict[str, tuple[int, int]] = {}
        self.profile_shapes = info.get("profile_shapes", {})

    def _check_range(self, name: str, shape: tuple[int, ...]) -> None:
        """Refuse, before running, a shape outside the engine's optimization profile."""
        if name not in self.profile_shapes:
            return
        lo, _, hi = self.profile_shapes[name]
        for axis, (v, a, b) in enumerate(zip(shape, lo, hi)):
            if not a <= v <= b:
                raise EdgeqError(
                    f"{name} axis {axis} is {v}; this engine was built for {a}..{b}",
                    "use a batch/resolution inside the [tensorrt] profile ranges, or rebuild with wider ones",
                )

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self.cudart.cudaFree(ptr))
            ptr = int(_check(self.cudart.cudaMalloc(max(nbytes, 1))))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cud = self.cudart
        h2d, d2h = cud.cudaMemcpyKind.cudaMemcpyHostToDevice, cud.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self.input_names:
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
            arr = np.ascontiguousarray(feeds[name], dtype=dtype)
            self._check_range(name, arr.shape)
            self.context.set_input_shape(name, arr.shape)
            ptr = self._buffer(name, arr.nbytes)
            _check(cud.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self.stream))
            self.context.set_tensor_address(name, ptr)
        outs = {}
        for name in self.output_names:
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
            arr = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype)
            ptr = self._buffer(name, arr.nbytes)
            self.context.set_tensor_address(name, ptr)
            outs[name] = arr
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execution failed")
        for name, arr in outs.items():
            _check(cud.cudaMemcpyAsync(arr.ctypes.data, self._buffers[name][0], arr.nbytes, d2h, self.stream))
        _check(cud.cudaStreamSynchronize(self.stream))
        return {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in outs.items()}

    def __del__(self):
        try:
            for ptr, _ in self._buffers.values():
                self.cudart.cudaFree(ptr)
        except Exception:
            pass


# --- the build's last stage ------------------------------------------------------------------------


def engines_status(ctx, folder: Path) -> dict[str, Any]:
    """What the manifest and report say about engines before they are built."""
    sim = "CPU simulation: ONNX Runtime runs the TensorRT graphs (INT8 Q/DQ exact, FP16 float ops)"
    finish_cmd = f"on a machine with an NVIDIA GPU and TensorRT: edgeq engines {folder} (or bash {folder}/trtexec.sh)"
    if ctx.opts.onnx_only:
        return {"built": False, "reason": "--onnx-only", "checks": sim, "finish": finish_cmd}
    reason = unavailable_reason()
    if reason:
        return {"built": False, "reason": reason, "checks": sim, "finish": finish_cmd}
    return {"built": False, "pending": True, "reason": "built after the CPU-simulated checks pass", "checks": sim}


def deployed_unet_runner(folder: Path, manifest: dict[str, Any]):
    """The UNet as it will run, when engines exist (the checks then measure the engines)."""
    info = manifest["components"].get("unet", {})
    return _engine(folder, info) if info.get("runtime") == ENGINE else None


def finish(folder: Path, ctx, held_cap, rep, log=print):
    """After the CPU-simulated checks: engines and the GPU checks where possible.

    The simulated report is kept as ``report_cpu_simulation.{json,md}``; with engines, ``report.*``
    is rewritten from checks that run the engines.
    """
    from edgeq.build import check_folder
    from edgeq.manifest import artifact_table, read_manifest, write_manifest

    for ext in ("json", "md"):
        shutil.copy2(folder / f"report.{ext}", folder / f"report_cpu_simulation.{ext}")
    manifest = read_manifest(folder)
    manifest["artifacts"].update(artifact_table(folder, ["report_cpu_simulation.json", "report_cpu_simulation.md"]))
    status = manifest.get("engines_status", {})
    if not status.get("pending"):
        write_manifest(folder, manifest)
        return rep
    if not rep.passed:
        manifest["engines_status"] = {
            **status,
            "pending": False,
            "reason": "the CPU-simulated gates failed; no engines built",
        }
        write_manifest(folder, manifest)
        return rep
    write_manifest(folder, manifest)
    engines_and_status(folder, log)
    return check_folder(folder, ctx=ctx, held_cap=held_cap, log=log)


def engines_and_status(folder: Path, log=print) -> dict[str, Any]:
    """Build the engines of a build folder and record it: `edgeq engines` and the build's last stage."""
    from edgeq.manifest import read_manifest, write_manifest

    t0 = time.time()
    build_engines(folder, log)
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
