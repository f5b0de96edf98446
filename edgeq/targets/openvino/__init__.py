"""OpenVINO target: Q/DQ ONNX lowered to OpenVINO IR with OpenVINO's own converter.

OpenVINO's ONNX frontend turns Q/DQ pairs into FakeQuantize and its low-precision transformations
run the quantized Conv/MatMul as int8 kernels. Everything else runs in the precision the profile
names (``inference_precision``): OpenVINO would pick bf16 by itself on CPUs that have it, so edgeq
always sets the hint and records, per component, how many compute layers actually run in int8,
bf16 or f32 (read from the compiled model's runtime graph).

Per-group mode: one IR per timestep group. IR files cannot point into another model's weights file,
so each group's ``.bin`` holds its own copy of the weights: disk and memory cost x groups.

Shared mode: the folder is also one OpenVINO GenAI runs as it is (:mod:`.genai`); per-group and gains
builds get one in ``genai/`` where the profile asks (``genai = "on"``), with the shared-range UNet.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeq.runtime.sessions import component_runner, grouped
from edgeq.targets.base import Target
from edgeq.targets.common import graphs_of, onnx_layout
from edgeq.targets.openvino import genai

COMPUTE_LAYERS = ("Convolution", "MatMul", "FullyConnected", "GroupConvolution", "Deconvolution")


def compiled_cache_dir() -> Path:
    return Path(os.environ.get("EDGEQ_CACHE", Path.home() / ".cache" / "edgeq")) / "openvino"


CACHE_LIMIT_GB = 16.0  # default bound of the compiled-model cache (EDGEQ_OPENVINO_CACHE_GB)


def prune_compiled_cache(keep_newest: int = 1) -> list[Path]:
    """Bound the compiled-model cache to ``EDGEQ_OPENVINO_CACHE_GB`` (default 16): the least recently
    used blobs go first (last read or written, as the file system's access times tell), never the
    ``keep_newest`` most recent (what was just compiled). OpenVINO itself never deletes a blob: a
    session of SDXL builds and benchmarks filled 24 GB. Returns what was removed."""
    folder = compiled_cache_dir()
    limit = float(os.environ.get("EDGEQ_OPENVINO_CACHE_GB", CACHE_LIMIT_GB)) * 2**30
    if not folder.is_dir():
        return []
    files = []
    for f in folder.iterdir():
        try:
            st = f.stat()
        except OSError:  # removed meanwhile by another process
            continue
        if f.is_file():
            files.append((max(st.st_atime, st.st_mtime), st.st_size, f))
    files.sort(reverse=True)  # most recently used first
    total, removed = sum(size for _, size, _ in files), []
    for _, size, f in files[keep_newest:][::-1]:
        if total <= limit:
            break
        f.unlink(missing_ok=True)
        total -= size
        removed.append(f)
    return removed


@dataclass(frozen=True)
class OpenVinoOptions:
    """The profile's ``[openvino]`` section: where and how the compiled models run."""

    device: str = field(default="CPU", metadata={"help": "OpenVINO device (CPU is tested; GPU, NPU pass through)"})
    inference_precision: str = field(
        default="auto",
        metadata={
            "choices": ("auto", "f32", "bf16", "f16"),
            "help": "precision of everything that is not int8; auto: bf16 where the build host has it and "
            "measures it faster and as accurate (OpenVINO would pick bf16 by itself where it can)",
        },
    )
    performance_hint: str = field(
        default="LATENCY",
        metadata={"choices": ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"), "help": "OpenVINO performance hint"},
    )
    genai: str = field(
        default="auto",
        metadata={
            "choices": ("auto", "on", "off"),
            "help": "auto: a build GenAI can run (one UNet graph) is also an OpenVINO GenAI folder; on: per-group "
            "and gains builds also get one in genai/, with the shared-range UNet graph; off: never",
        },
    )


def _options(ctx_or_info: dict[str, Any]) -> dict[str, str]:
    """The runner's options (device, precision hint, performance hint) from the profile or the manifest."""
    return {
        "device": str(ctx_or_info.get("device", "CPU")),
        "inference_precision": str(ctx_or_info.get("inference_precision", "f32")),
        "performance_hint": str(ctx_or_info.get("performance_hint", "LATENCY")),
    }


class OpenVinoRunner:
    """A compiled OpenVINO model with an explicit precision hint and the compiled-model cache."""

    def __init__(
        self,
        path: Path,
        device: str = "CPU",
        inference_precision: str = "f32",
        performance_hint: str = "LATENCY",
        cache: bool = True,
    ):
        import openvino as ov

        core = ov.Core()
        if cache:
            compiled_cache_dir().mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(compiled_cache_dir())})
        config = {"PERFORMANCE_HINT": performance_hint}
        if device.startswith("CPU") or device.startswith("GPU"):
            config["INFERENCE_PRECISION_HINT"] = inference_precision
        self.compiled = core.compile_model(str(path), device, config)
        if cache:  # after the compile: what it wrote or read is the most recently used
            prune_compiled_cache()
        self.request = self.compiled.create_infer_request()
        self.input_names = [n for i in self.compiled.inputs for n in i.get_names()]
        self.outputs = list(self.compiled.outputs)
        # inputs whose type differs from what edgeq's pipeline feeds (a GenAI folder's int64 timestep [1]
        # and token ids): name -> (numpy type, rank)
        self._ports = {
            n: (i.get_element_type().to_dtype(), i.get_partial_shape().rank.get_length())
            for i in self.compiled.inputs
            for n in i.get_names()
        }

    def _feed(self, name: str, value: Any) -> Any:
        import numpy as np

        dtype, rank = self._ports[name]
        v = np.asarray(value)
        if v.dtype == dtype and v.ndim == rank:
            return value
        if np.issubdtype(dtype, np.integer) and not np.issubdtype(v.dtype, np.integer):
            v = np.rint(v)  # a GenAI UNet takes integer timesteps, as GenAI and optimum-intel feed them
        v = v.astype(dtype)
        return v.reshape((1,) * (rank - v.ndim) + v.shape) if v.ndim < rank else v

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        res = self.request.infer({k: self._feed(k, v) for k, v in feeds.items() if k in self.input_names})
        # an output tensor may carry several names (the ONNX name and internal ones): answer to all
        return {name: np.array(res[o]) for o in self.outputs for name in o.get_names()}

    def layer_precisions(self) -> dict[str, int]:
        """Compute layers of the compiled model by the precision they run in (i8/u8/bf16/f32)."""
        counts: Counter[str] = Counter()
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            if "layerType" in rt and "runtimePrecision" in rt:
                kind = rt["layerType"].astype(str)
                if kind in COMPUTE_LAYERS:
                    counts[f"{kind}:{rt['runtimePrecision'].astype(str)}"] += 1
        return dict(sorted(counts.items()))


def _convert(src: Path, xml: Path, int64_inputs: dict[str, list[int] | None] | None = None) -> None:
    """ONNX to IR; ``int64_inputs``: inputs retyped to int64 (of the given shape) for GenAI."""
    import openvino as ov

    model = ov.convert_model(str(src))
    for name, shape in (int64_inputs or {}).items():
        genai.int64_input(model, name, shape)
    ov.save_model(model, str(xml), compress_to_fp16=False)


def package(
    ctx, stage: Path, unet, mode: str, vae_dir: Path | None, resolve, genai_opt: str = "auto"
) -> tuple[list[Path], dict[str, Any], dict[str, Any]]:
    """The ONNX Runtime layout first (in a temporary folder), then every graph converted to IR; in a
    GenAI folder, the IRs are ``openvino_model.xml`` with GenAI's input types, plus its extra files.
    ``resolve(unet_graph)``: the runner options, the precision hint chosen (``auto``) on that graph."""
    tmp, files, onnx_comps = onnx_layout(ctx, stage, unet, mode, vae_dir)
    opts, choice = resolve(tmp / graphs_of(onnx_comps["unet"])[0]["path"])
    em = ctx.export_manifest
    sched_class = json.loads((ctx.export_dir / em["scheduler_config"]).read_text()).get("_class_name", "")
    why_not = genai.blocker(mode, em, sched_class, genai_opt)
    comps: dict[str, Any] = {}
    if why_not is None and ctx.export.has("vae_encoder"):  # GenAI's image-to-image and inpainting need it
        onnx_comps = {**onnx_comps, "vae_encoder": {**em["components"]["vae_encoder"]}}
        onnx_comps["vae_encoder"].pop("validation", None)
        (stage / "vae_encoder").mkdir()
        shutil.copy2(ctx.export_dir / "vae_encoder" / "config.json", stage / "vae_encoder" / "config.json")
        files.append(stage / "vae_encoder" / "config.json")
    for name, info in onnx_comps.items():
        new_graphs = []
        precisions: dict[str, int] = {}
        src_root = ctx.export_dir if name == "vae_encoder" else tmp
        retype = genai.INT64_INPUTS.get(name) if why_not is None else None
        for g in graphs_of(info):
            rel = Path(g["path"]).with_suffix(".xml")
            if why_not is None:
                rel = rel.with_name(genai.MODEL_FILE)
            (stage / rel.parent).mkdir(parents=True, exist_ok=True)
            _convert(src_root / g["path"], stage / rel, retype)
            files += [stage / rel, (stage / rel).with_suffix(".bin")]
            new_graphs.append({**g, "path": str(rel)})
            precisions = OpenVinoRunner(stage / rel, **opts, cache=False).layer_precisions()
        entry = {k: v for k, v in info.items() if k not in ("graphs", "path")}
        if retype:
            entry["inputs"] = genai.retyped_inputs(entry.get("inputs", []), retype)
        if "graphs" in info:
            entry["graphs"] = new_graphs
        else:
            entry["path"] = new_graphs[0]["path"]
        entry.update(
            runtime="openvino",
            openvino={
                **opts,
                **({"precision_choice": choice} if choice else {}),
                "compute_layers_by_precision": precisions,
                "compiled_model_cache": str(compiled_cache_dir()),
            },
        )
        comps[name] = entry
    shutil.rmtree(tmp)
    if why_not is None:
        files += genai.write_extras(stage, em)
        return files, comps, genai.status(None)
    if genai_opt == "on" and genai.blocker("shared", em, sched_class, genai_opt) is None:
        # asked for: a GenAI folder beside the build, with the one graph GenAI can run (shared ranges)
        sub, _, sub_status = package(ctx, stage / genai.SUBFOLDER, unet, "shared", vae_dir, resolve, genai_opt)
        return files + sub, comps, genai.status_subfolder(why_not, sub_status)
    return files, comps, genai.status(why_not)


def _runner(build: Path, info: dict[str, Any]):
    opts = _options(info.get("openvino", {}))
    return component_runner(lambda p: OpenVinoRunner(p, **opts), build, info)


class OpenVinoTarget(Target):
    name = "openvino"
    description = "OpenVINO IR for Intel/AMD CPUs, GPUs and NPUs"
    runtime = "openvino"
    cpu_kernels = True
    install = "pip install 'edgeq[openvino]'"
    section = "openvino"
    Options = OpenVinoOptions
    _genai: dict[str, Any] | None = None  # set by package(): the manifest's ``genai`` entry
    _precision: dict[str, Any] | None = None  # inference_precision = "auto": the measured choice

    def _opts(self, ctx=None, unet_graph: Path | None = None) -> dict[str, str]:
        """The runner options; ``auto`` precision is measured once, on the first UNet graph asked for."""
        opts = _options(asdict(self.options))
        if opts["inference_precision"] == "auto":
            if self._precision is None:
                from edgeq.runtime.cpu import detect
                from edgeq.targets.openvino import precision

                self._precision = precision.choose(
                    unet_graph,
                    lambda: precision.heldout_samples(ctx),
                    detect().flags,
                    opts["device"],
                    opts["performance_hint"],
                ).to_dict()
                ctx.stages.log(f"openvino precision hint: {self._precision['chosen']} ({self._precision['reason']})")
            opts["inference_precision"] = self._precision["chosen"]
        return opts

    def package(self, ctx, stage: Path, unet, mode: str, vae_dir: Path | None) -> tuple[list[Path], dict[str, Any]]:
        def resolve(graph: Path) -> tuple[dict[str, str], dict[str, Any] | None]:
            return self._opts(ctx, graph), self._precision

        files, comps, self._genai = package(ctx, stage, unet, mode, vae_dir, resolve, self.options.genai)
        return files, comps

    def manifest_entries(self) -> dict[str, Any]:
        """Whether the build is also an OpenVINO GenAI folder, and if not, why."""
        return {"genai": self._genai} if self._genai else {}

    def runners(self) -> dict[str, Any]:
        return {"openvino": _runner}

    def float_runner(self, path: Path, manifest: dict[str, Any], precision: str | None = None):
        """The same OpenVINO device with an explicit hint: f32 unless ``precision`` says otherwise. Not
        put in the compiled-model cache: a baseline is compiled once per benchmark, and an FP32 SDXL
        UNet's compiled blob is 10 GB of disk."""
        opts = _options(manifest["components"]["unet"].get("openvino", {}))
        return OpenVinoRunner(
            path,
            device=opts["device"],
            inference_precision=precision or "f32",
            performance_hint=opts["performance_hint"],
            cache=False,
        )

    def unet_runner(self, ctx, graphs: list[tuple[Path, dict]]):
        """The checks run UNet variants with OpenVINO too (it reads the Q/DQ ONNX with the same frontend)."""
        opts = self._opts(ctx, graphs[0][0])
        return grouped(lambda p: OpenVinoRunner(p, **opts), graphs)


TARGET = OpenVinoTarget
