"""Runners: one object per component graph, ``run(feeds) -> {output name: array}``.

The FP32 build and the ONNX Runtime targets use :class:`OrtRunner`; other targets register their
own runner in their module (OpenVINO, TensorRT), so this file never imports them.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import gc
import os
from pathlib import Path
from typing import Protocol

import numpy as np


class Runner(Protocol):
    input_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


# Graphs over this much weight are "large": the build runs steps on them (Q/DQ insertion, the
# shortcut split) in a child process (:func:`edgeq.isolate.is_large`).
LARGE_GRAPH_BYTES = 1 << 30


def weight_bytes(path: Path) -> int:
    """The graph file plus its external data file(s) beside it (``<name>_data``, ``model.onnx_data``)."""
    path = Path(path)
    files = {path, path.with_name(path.name + "_data"), path.with_name("model.onnx_data")}
    return sum(f.stat().st_size for f in files if f.is_file())


@functools.cache
def _register_shared_arena() -> None:
    """The process's shared CPU arena, registered once: no cap, ``kSameAsRequested``, default initial
    chunk and dead bytes per chunk."""
    import onnxruntime as ort

    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))


def use_shared_arena(opts) -> None:
    """Give a CPU session (``opts``, with ``enable_cpu_mem_arena``) the process's one memory arena, which
    grows by exactly what is asked (``kSameAsRequested``) rather than by ONNX Runtime's default
    doubling of its last chunk. A session's first call has no memory pattern yet and allocates tensor
    by tensor: with doubling chunks the calibration capture's SD1.5-shaped FP32 UNet (unoptimised, the
    calibrated tensors as extra outputs, one batch item at a time, 64x64 latents) peaked at 8.09 GB in
    its first call and 6.23 GB in the next; with this, 6.28 and 6.29 GB, at the same time per call.
    The unaugmented, optimised sessions of :class:`OrtRunner` gain nothing from it (FP32 UNet 4.48
    against 4.43 GB per call; the INT8 UNet's first call peaked higher, 3.21 against 2.36 GB), so
    they keep their own arena (``python tools/bench_shared_arena.py``,
    ``benchmarks/shared_arena_sd15_x86-vnni.md``, x86-vnni, 2 cores, 2026-12-04)."""
    _register_shared_arena()
    opts.add_session_config_entry("session.use_env_allocators", "1")


def shrinking_run_options():
    """Run options that make a CPU session's memory arena hand its free chunks back after the call."""
    import onnxruntime as ort

    opts = ort.RunOptions()
    opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return opts


class OrtRunner:
    """An ONNX Runtime CPU session: full graph optimisation (Q/DQ fused into int8 kernels), or none
    (``optimize=False``: Q/DQ as exact arithmetic, and ``.ort`` files as a minimal build runs them).
    It runs with ONNX Runtime's CPU memory arena, which hands its free chunks back after every call,
    and hands out copies of its outputs.

    Large graphs too: the SD1.5-shaped FP32 UNet at batch 2, 64x64 latents, took 17.1, 12.0, 11.5 s
    per call and peaked at 6.23 GB without the arena (every large activation a fresh allocation the
    kernel zero-fills: 7.0 M page faults, 17.5 s of system time), and 10.7, 10.3, 11.0 s and 5.55 GB
    with it handed back (4.1 M, 9.2 s; ``tools/bench_session_arena.py --optimize --batch 2``,
    x86-vnni, 2 cores, 2026-12-03). Kept without the give-back, the arena held 7.7 GB after two calls."""

    def __init__(self, path: Path, threads: int | None = None, optimize: bool = True):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        self.arena = True
        opts.enable_cpu_mem_arena = True
        level = ort.GraphOptimizationLevel
        opts.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
        opts.intra_op_num_threads = threads or int(os.environ.get("EDGEQ_THREADS", "0"))
        opts.log_severity_level = 3  # errors only: FP16 graphs warn about every constant it cannot fold
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        # hand the arena's free chunks back after every call: a VAE decoder at 512 px kept 2.3 GB
        # after two calls with the arena and 0.44 GB with this, at the same time per call; on
        # tiny-sd's UNet and VAE the time per call was unchanged (2026-12-03, AVX512-VNNI machine)
        self.run_options = shrinking_run_options()
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        # a float UNet whose batch axis is dynamic: large batched calls run one item at a time
        # (SPLIT_AREA); Q/DQ graphs run the pair at once
        self.splits = any(
            i.name == "sample" and len(i.shape or []) == 4 and not isinstance(i.shape[0], int)
            for i in self.session.get_inputs()
        ) and not _has_qdq(path)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        items = split_items(feeds) if self.splits else [feeds]
        per_item = [self.session.run(self.output_names, item, self.run_options) for item in items]
        # An output array ONNX Runtime hands over lives in the session's arena and keeps the whole
        # arena alive, after the session too: the verification bundle's 22 kept outputs held four
        # per-group sessions' arenas, 12 GB at SD1.5 size (2026-12-03). A copy frees it (and so
        # does the concatenation of a split call's items).
        if len(per_item) == 1:
            outs = [np.array(v, copy=True) for v in per_item[0]]
        else:
            outs = [np.concatenate(vs) for vs in zip(*per_item)]
        return dict(zip(self.output_names, outs))


# A float UNet's batched call (the classifier-free-guidance pair) over at least this many latent
# positions runs one batch item at a time. SD1.5-shaped FP32 UNet at 64x64 latents: 10.3 s for the two
# items one after the other against 11.6 s for the pair at once, the same outputs bit for bit; its
# INT8 (Q/DQ) graph: 5.01 against 4.95 s, so Q/DQ graphs are not split (`python
# tools/bench_batch_split.py <fp32 unet> <int8 unet> --calls 4`, medians of 4 after a warm-up,
# `benchmarks/batch_split_sd15_x86-vnni.md`, x86-vnni, 2 cores, 2026-12-04).
SPLIT_AREA = 64 * 64


def _has_qdq(path: Path) -> bool:
    """Whether an ONNX graph holds Q/DQ nodes (its structure only, no weights read)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except DecodeError:  # not an ONNX protobuf (an .ort file, whose shapes are static anyway): no split
        return True
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)


def batch_items(feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """A batched call (the classifier-free-guidance pair) as calls of one item each; inputs without
    the batch axis (the timestep) go to every item. Only for graphs with a dynamic batch axis (the
    caller checks). The statistics use it too: histograms add over items, so they are the same, and the
    peak is one item's activations (SD1.5-shaped UNet: 9.6 GB for the pair, 7.1 GB for one)."""
    batch = feeds["sample"].shape[0] if "sample" in feeds and feeds["sample"].ndim else 1
    if batch == 1:
        return [feeds]
    return [
        {k: (v[i : i + 1] if v.ndim and v.shape[0] == batch else v) for k, v in feeds.items()} for i in range(batch)
    ]


def split_items(feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """:func:`batch_items` where ``sample`` covers at least :data:`SPLIT_AREA` latent positions; else
    ``[feeds]``."""
    x = feeds.get("sample")
    if x is None or x.ndim != 4 or x.shape[2] * x.shape[3] < SPLIT_AREA:
        return [feeds]
    return batch_items(feeds)


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


def release_memory() -> None:
    """Free what unreachable objects hold and hand the C heap's free pages back to the system (glibc's
    ``malloc_trim``): a freed session's weights otherwise stay in the process, and the next session's
    allocations land beside them rather than in their place."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): the allocator keeps its pages
        pass


class OneGroupRunner:
    """Per-group UNet graphs with one graph loaded at a time: a call for another group drops the loaded
    graph before loading the next. Memory stays at one graph's whatever the group count; each switch
    costs a load, so callers order their calls by group (group-major checks, lockstep generation)."""

    def __init__(self, make, paths: list[Path], groups: list[dict]):
        from edgeq.runtime.groups import group_for

        self._group_for = group_for
        self._make = make
        self.paths = paths
        self.groups = groups
        self.loads = 0
        self._index, self._runner = -1, None
        self._load(0)
        self.input_names = self._runner.input_names

    def _load(self, g: int) -> None:
        if g != self._index:
            self._runner = None
            release_memory()  # the old session's memory goes back before the new one is allocated
            self._runner = self._make(self.paths[g])
            self._index = g
            self.loads += 1

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._load(self._group_for(self.groups, float(feeds["timestep"])))
        return self._runner.run(feeds)


_ONE_GROUP = contextvars.ContextVar("edgeq_one_group_at_a_time", default=False)


@contextlib.contextmanager
def one_group_at_a_time():
    """Runners made inside hold one per-group graph at a time (:class:`OneGroupRunner`): the build's
    checks, which order their calls by group, keep one UNet's weights in memory, not one per group."""
    token = _ONE_GROUP.set(True)
    try:
        yield
    finally:
        _ONE_GROUP.reset(token)


def grouped(make, graphs: list[tuple[Path, dict]]) -> Runner:
    """``make(path)`` over per-group graphs: all loaded, or one at a time inside :func:`one_group_at_a_time`."""
    if len(graphs) == 1:
        return make(graphs[0][0])
    if _ONE_GROUP.get():
        return OneGroupRunner(make, [p for p, _ in graphs], [g for _, g in graphs])
    return GroupedRunner([(make(p), g) for p, g in graphs])


def component_runner(make, build: Path, info: dict, key: str = "path") -> Runner:
    """``make(file)`` for a manifest component: its one graph, or each of its per-group graphs."""
    if "graphs" in info:
        return grouped(make, [(build / g[key], g) for g in info["graphs"]])
    if "gains" in info:
        import json

        return GainsRunner(make(build / info[key]), json.loads((build / info["gains"]).read_text()))
    return make(build / info[key])
