"""A target that lives outside edgeq (one folder plus ``plugin_target.toml``): ONNX Runtime with
graph optimisation off, so Q/DQ graphs run as exact quantize/dequantize arithmetic, not as the
CPU's int8 kernels. The registry test builds, checks and runs it without touching ``edgeq/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeq.runtime.sessions import OrtRunner, component_runner, grouped
from edgeq.targets.base import Target
from edgeq.targets.ort_cpu import package_onnx

RUNTIME = "onnxruntime-exact"


def exact_runner(path: Path) -> OrtRunner:
    """ONNX Runtime on the CPU with every graph optimisation off (no QLinear fusion)."""
    return OrtRunner(path, optimize=False)


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
        return {RUNTIME: lambda build, info: component_runner(exact_runner, build, info)}

    def unet_runner(self, ctx, graphs: list[tuple[Path, dict]]):
        return grouped(exact_runner, graphs)


TARGET = OrtExactTarget
