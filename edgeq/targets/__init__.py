"""The target registry: one entry per backend, its module imported only when it is used.

A new target is one module in this package plus one line here.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class TargetInfo:
    name: str
    description: str
    module: str  # edgeq.targets.<module>, imported lazily
    runtime: str  # the Python package that runs it
    install: str  # how to get that package
    implemented: bool

    def runtime_installed(self) -> bool:
        return importlib.util.find_spec(self.runtime) is not None

    @property
    def needs_runtime_to_build(self) -> bool:
        """TensorRT builds its ONNX and CPU-simulated checks without TensorRT; engines need it."""
        return self.name != "tensorrt"


TARGETS: dict[str, TargetInfo] = {
    t.name: t
    for t in (
        TargetInfo(
            "ort-cpu",
            "ONNX Runtime on x86/ARM CPUs (W8A8 Q/DQ, U8S8)",
            "ort_cpu",
            "onnxruntime",
            "pip install onnxruntime",
            True,
        ),
        TargetInfo(
            "ort-mobile",
            "ONNX Runtime mobile: .ort + reduced-build operator config, XNNPACK W8A8, static shapes",
            "ort_mobile",
            "onnxruntime",
            "pip install onnxruntime",
            True,
        ),
        TargetInfo(
            "ort-mobile-qnn",
            "ONNX Runtime mobile for Qualcomm NPUs (QNN EP): .ort, W8A16, static shapes",
            "ort_mobile",
            "onnxruntime",
            "pip install onnxruntime",
            True,
        ),
        TargetInfo(
            "openvino",
            "OpenVINO IR for Intel/AMD CPUs, GPUs and NPUs",
            "openvino",
            "openvino",
            "pip install 'edgeq[openvino]'",
            True,
        ),
        TargetInfo(
            "tensorrt",
            "TensorRT INT8 engines for NVIDIA GPUs (Jetson included)",
            "tensorrt",
            "tensorrt",
            "pip install 'edgeq[tensorrt]' (needs an NVIDIA GPU to build engines)",
            True,
        ),
    )
}


def get_target(name: str):
    """The target's module (imported now), or a clear error when it is unknown or its runtime is missing."""
    import importlib

    from edgeq.errors import EdgeqError

    info = TARGETS.get(name)
    if info is None:
        raise EdgeqError(f"unknown target '{name}'", f"targets: {', '.join(TARGETS)}")
    if not info.implemented:
        raise EdgeqError(f"the '{name}' target is not implemented yet", "see `edgeq targets`; ort-cpu works today")
    if info.needs_runtime_to_build and not info.runtime_installed():
        raise EdgeqError(f"the '{name}' target needs {info.runtime}, which is not installed", info.install)
    return importlib.import_module(f"edgeq.targets.{info.module}")
