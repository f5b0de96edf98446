"""A target that lives outside edgeq (one folder plus ``plugin_target.toml``): ONNX Runtime with
graph optimisation off, so Q/DQ graphs run as exact quantize/dequantize arithmetic, not as the
CPU's int8 kernels. The registry test builds, checks and runs it without touching ``edgeq/``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgeq.runtime.sessions import component_runner, one_or_grouped
from edgeq.targets.base import Target
from edgeq.targets.ort_cpu import package_onnx

RUNTIME = "onnxruntime-exact"


class ExactRunner:
    """An ONNX Runtime CPU session with every graph optimisation off (no QLinear fusion)."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads = int(os.environ.get("EDGEQ_THREADS", "0"))
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))


class OrtExactTarget(Target):
    name = "ort-exact"
    description = "ONNX Runtime, graph optimisation off: Q/DQ graphs as exact arithmetic (a reference target)"
    runtime = "onnxruntime"
    install = "pip install onnxruntime"

    def package(self, ctx, stage: Path, unet, mode: str, vae_dir: Path | None):
        files, comps = package_onnx(ctx, stage, unet, mode, vae_dir)
        for name in ("unet", "vae_decoder"):
            if comps[name].get("runtime") == "onnxruntime":
                comps[name]["runtime"] = RUNTIME
        return files, comps

    def runners(self) -> dict[str, Any]:
        return {RUNTIME: lambda build, info: component_runner(ExactRunner, build, info)}

    def unet_runner(self, ctx, graphs: list[tuple[Path, dict]]):
        return one_or_grouped([(ExactRunner(p), g) for p, g in graphs])


TARGET = OrtExactTarget
