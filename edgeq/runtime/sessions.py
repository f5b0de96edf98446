"""Runners: one object per component graph, ``run(feeds) -> {output name: array}``.

The FP32 build and the ONNX Runtime targets use :class:`OrtRunner`; other targets register their
own runner in their module (OpenVINO, TensorRT), so this file never imports them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np


class Runner(Protocol):
    input_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class OrtRunner:
    """An ONNX Runtime CPU session: full graph optimisation (Q/DQ fused into int8 kernels), or none
    (``optimize=False``: Q/DQ as exact arithmetic, and ``.ort`` files as a minimal build runs them)."""

    def __init__(self, path: Path, threads: int | None = None, optimize: bool = True):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        level = ort.GraphOptimizationLevel
        opts.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
        opts.intra_op_num_threads = threads or int(os.environ.get("EDGEQ_THREADS", "0"))
        opts.log_severity_level = 3  # errors only: FP16 graphs warn about every constant it cannot fold
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))


class LazyRunner:
    """An :class:`OrtRunner` made on its first call: references that are usually captured (the FP32
    UNet's outputs) cost no memory unless a capture lacks them."""

    def __init__(self, path: Path):
        self.path = path
        self._runner: OrtRunner | None = None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._runner is None:
            self._runner = OrtRunner(self.path)
        return self._runner.run(feeds)


class GroupedRunner:
    """Per-group UNet graphs: each call runs the graph of the group whose timestep interval is nearest."""

    def __init__(self, runners: list[tuple[Runner, dict]]):
        from edgeq.runtime.groups import group_for

        self._group_for = group_for
        self.groups = [g for _, g in runners]
        self.runners = [r for r, _ in runners]
        self.input_names = self.runners[0].input_names

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runners[self._group_for(self.groups, float(feeds["timestep"]))].run(feeds)


class GainsRunner:
    """One UNet graph for every timestep group: each call feeds the gains row of its group
    (``edgeq_gains``, see :mod:`edgeq.quantize.gains`), chosen by the same nearest-interval rule."""

    def __init__(self, runner: Runner, gains: dict):
        from edgeq.runtime.groups import group_for

        self._group_for = group_for
        self.runner = runner
        self.input = gains["input"]
        self.groups = gains["groups"]
        self.table = np.asarray(gains["table"], np.float32)
        self.input_names = [n for n in runner.input_names if n != self.input]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        g = self._group_for(self.groups, float(feeds["timestep"]))
        return self.runner.run({**feeds, self.input: self.table[g]})


def one_or_grouped(runners: list[tuple[Runner, dict]]) -> Runner:
    """The runner of a single graph, or a :class:`GroupedRunner` over per-group graphs."""
    return runners[0][0] if len(runners) == 1 else GroupedRunner(runners)


def component_runner(make, build: Path, info: dict, key: str = "path") -> Runner:
    """``make(file)`` for a manifest component: its one graph, or each of its per-group graphs."""
    if "graphs" in info:
        return GroupedRunner([(make(build / g[key]), g) for g in info["graphs"]])
    if "gains" in info:
        import json

        return GainsRunner(make(build / info[key]), json.loads((build / info["gains"]).read_text()))
    return make(build / info[key])
