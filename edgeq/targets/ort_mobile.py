"""ONNX Runtime mobile target: static-shape Q/DQ graphs converted to ORT format (``.ort``).

A reduced ("minimal") ONNX Runtime build for Android / iOS reads only ORT-format models and contains
only the kernels a configuration file names. edgeq writes both with ONNX Runtime's own tool
(``onnxruntime.tools.convert_onnx_models_to_ort``): one ``model.ort`` per graph and one
``required_operators.config`` for the whole deployable (``--include_ops_by_config`` of ORT's build).

Conversion settings, and why:

- Optimization style ``Fixed`` at the profile's level, by default ``extended``: Q/DQ node units are
  fused into ``ai.onnx`` QLinearConv / QLinearMatMul, which XNNPACK (QLinearConv) and the CPU EP take.
  Level ``all`` adds the CPU EP's NHWC layout (``com.microsoft`` QLinearConv), which no mobile EP
  takes. Style ``Runtime`` is not offered: ONNX Runtime 1.32 cannot replay the saved Q/DQ MatMul
  record it writes for the tiny-sd UNet ("Not enough produced nodes in the runtime optimization
  record"), so a device enabling the replay would fail to load the model.
- ``--target_platform arm``: int8 Q/DQ fusions allowed (``session.qdqisint8allowed``).
- Graphs with external data convert as they are; the ``.ort`` file embeds the weights. An ORT file
  is one flatbuffer, which cannot exceed 2 GB, so a larger graph is refused before conversion.
- Per-group mode: in ONNX the group graphs share one weights file; an ``.ort`` file cannot point
  outside itself, so each group's file holds its own copy of the weights: disk x groups (tiny-sd
  UNet, 4 groups: 4 x 7.0 MB of ``.ort`` against 9.4 MB of ONNX); memory x groups as for ort-cpu.
- The ``.ort`` bytes differ between two conversions of the same graph: ORT serialises its kernel
  type-string table (the first few KB) in hash-map order. Graph and weights are identical; the
  manifest records the sha256 of the files actually shipped.

ONNX Runtime's mobile usability checker (``onnxruntime.tools.check_onnx_model_mobile_usability``,
whose work is ``usability_checker.analyze_model``) runs on each component's ONNX graph before
conversion; its verdict per execution provider (NNAPI, CoreML NeuralNetwork, CoreML MLProgram) and
the lines that explain it go into the manifest and the report. It has no XNNPACK check; the
manifest's ``ort_format.qdq_flavours`` counts compute nodes by the Q/DQ flavour they read instead.

The accuracy checks (and ``edgeq run``) run the ``.ort`` files with ONNX Runtime's CPU EP: the
desktop wheel has no XNNPACK, NNAPI or QNN EP. Sessions load with further graph optimisation
disabled, as a minimal build would run them.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeq.errors import EdgeqError
from edgeq.runtime.sessions import OrtRunner, component_runner, grouped
from edgeq.targets.base import Target
from edgeq.targets.common import graphs_of, onnx_layout

RUNTIME = "onnxruntime-ort"  # manifest runtime name: ORT-format graphs on ONNX Runtime
ORT_LIMIT = 2**31 - 1  # bytes: flatbuffers' 2 GB offset limit
LEVELS = ("basic", "extended", "all")
PLATFORMS = ("arm", "amd64")
CONFIG = "required_operators.config"
INSTALL = "pip install --upgrade onnxruntime flatbuffers"


@dataclass(frozen=True)
class MobileOptions:
    """The profile's ``[onnxruntime]`` section: how to convert, and how the device should run it."""

    execution_providers: tuple[str, ...] = field(
        default=("XNNPACK", "CPU"),
        metadata={"help": "execution providers the app should use (recorded; checks use CPU)"},
    )
    provider_options: dict[str, dict[str, str]] = field(
        default_factory=dict, metadata={"help": "options per execution provider (recorded)"}
    )
    optimization_level: str = field(
        default="extended",
        metadata={"choices": LEVELS, "help": "ORT converter's optimization level (see the module docstring)"},
    )
    target_platform: str = field(
        default="arm", metadata={"choices": PLATFORMS, "help": "ORT converter's --target_platform"}
    )


# -- the 2 GB limit -------------------------------------------------------------------------------
def graph_bytes(path: Path) -> int:
    """What an ORT file of this graph must hold: the graph and every initializer, external ones included."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    total = model.ByteSize()
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            total += int({e.key: e.value for e in init.external_data}.get("length", 0))
    return total


def check_ort_size(path: Path, component: str) -> int:
    size = graph_bytes(path)
    if size > ORT_LIMIT:
        raise EdgeqError(
            f"{component}: {path.name} holds {size / 2**30:.2f} GiB of graph and weights; an ORT-format "
            "model is one flatbuffer, which cannot exceed 2 GB (external data is not possible in .ort)",
            "quantize this component to shrink it under 2 GB, or use the ort-cpu target, whose ONNX graphs "
            "keep their weights in an external file",
        )
    return size


# -- conversion -------------------------------------------------------------------------------------
def _require_converter() -> None:
    import importlib.util

    for mod in ("onnxruntime.tools.convert_onnx_models_to_ort", "flatbuffers"):
        try:
            found = importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise EdgeqError(
                f"the ort-mobile target needs ONNX Runtime's model converter, and {mod} is not installed",
                INSTALL,
            )


def convert(src: Path, out: Path, opts: MobileOptions) -> list[Path]:
    """Every ``.onnx`` under ``src`` to ``out/<same path>.ort``, plus ``out/required_operators.config``.

    ORT's tool runs in a child process: it reads its optimization level from an environment
    variable, prints progress and configures the root logger, none of which should leak into edgeq.
    ORT names files after the level (``model.extended.ort``); edgeq renames them to ``model.ort``
    and ``required_operators.config`` and records the level in the manifest. The config's header
    names the temporary paths converted; it is rewritten to the build-relative paths.
    """
    _require_converter()
    cmd = [
        sys.executable,
        "-m",
        "onnxruntime.tools.convert_onnx_models_to_ort",
        "--optimization_style",
        "Fixed",
        "--target_platform",
        opts.target_platform,
        "--output_dir",
        str(out),
        str(src),
    ]
    env = {**os.environ, "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL": opts.optimization_level}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"ONNX Runtime's converter failed on {src}:\n{(r.stdout + r.stderr)[-3000:]}")
    suffix = "" if opts.optimization_level == "all" else f".{opts.optimization_level}"
    written: list[Path] = []
    for onnx_path in sorted(src.rglob("*.onnx")):
        rel = onnx_path.relative_to(src)
        got = (out / rel).with_suffix(f"{suffix}.ort")
        dst = (out / rel).with_suffix(".ort")
        if got != dst:
            os.replace(got, dst)
        written.append(dst)
    got_config = out / f"required_operators{suffix}.config"
    body = [ln for ln in got_config.read_text().splitlines() if not ln.startswith("#")]
    header = [
        "# Operators (domain;opset;ops) for a reduced ONNX Runtime build: --include_ops_by_config",
        f"# Written by onnxruntime.tools.convert_onnx_models_to_ort (style Fixed, level "
        f"{opts.optimization_level}, target platform {opts.target_platform}) from:",
        *(f"# - {p.relative_to(out)}" for p in written),
    ]
    got_config.unlink()
    (out / CONFIG).write_text("\n".join(header + body) + "\n")
    return written


def qdq_flavours(path: Path) -> dict[str, int]:
    """Compute nodes by the Q/DQ flavour they read: what an EP's int8 kernels can claim.

    E.g. "Conv: int8 x int8 per-channel (zp 0)" is XNNPACK's qs8_qc8w Conv; a node reading no
    DequantizeLinear is "float". ORT's usability checker has no XNNPACK verdict; this count stands in.
    """
    from collections import Counter

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    prod = {o: n for n in model.graph.node for o in n.output}

    def dq(name: str):
        n = prod.get(name)
        return n if n is not None and n.op_type == "DequantizeLinear" else None

    def dtype(name: str) -> str:
        t = inits.get(name)
        return onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name if t is not None else "?"

    counts: Counter[str] = Counter()
    for n in model.graph.node:
        if n.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        x, w = (dq(n.input[0]), dq(n.input[1])) if len(n.input) > 1 else (None, None)
        if x is None or w is None:
            counts[f"{n.op_type}: float"] += 1
            continue
        act = dtype(x.input[2]) if len(x.input) > 2 else "?"
        wz = inits.get(w.input[2]) if len(w.input) > 2 else None
        zp0 = wz is None or not onnx.numpy_helper.to_array(wz).any()
        per_channel = w.input[1] in inits and inits[w.input[1]].dims and inits[w.input[1]].dims[0] > 1
        counts[
            f"{n.op_type}: {act} x {dtype(w.input[0])} {'per-channel' if per_channel else 'per-tensor'}"
            f"{' (zp 0)' if zp0 else ''}"
        ] += 1
    return dict(sorted(counts.items()))


# -- ONNX Runtime's mobile usability checker ---------------------------------------------------
class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.extend(record.getMessage().splitlines())


def usability(path: Path) -> dict[str, Any]:
    """Run ORT's usability checker on one ONNX graph; its log parsed into a verdict per EP."""
    from onnxruntime.tools.mobile_helpers import usability_checker

    logger = logging.getLogger("edgeq.ort_mobile.usability")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = _Lines()
    logger.addHandler(handler)
    try:
        worth_trying = usability_checker.analyze_model(Path(path), skip_optimize=False, logger=logger)
    finally:
        logger.removeHandler(handler)
    return {
        "tool": "onnxruntime.tools.check_onnx_model_mobile_usability",
        "worth_trying_an_npu_ep": bool(worth_trying),
        "verdicts": parse_usability(handler.lines),
    }


def parse_usability(lines: list[str]) -> dict[str, dict[str, Any]]:
    """Per EP: the checker's verdict (YES / MAYBE / NO), the lines that explain it, the caveats it
    did not check, and the sizes of the partitions it found.

    The checker logs, per EP, "Checking <EP>", its partition analysis, and "Model should perform
    well with <EP> as is: <verdict>" (then, for dynamic shapes, a second verdict "if modified to have
    fixed input shapes"; the better one is its answer, as in the checker's own code).
    """
    rank = {"NO": 0, "MAYBE": 1, "YES": 2}
    out: dict[str, dict[str, Any]] = {}
    ep = None
    in_caveats = False
    for raw in lines:
        line = raw.strip()
        if line.startswith("Checking ") and " for usability" not in line and not line.startswith("Checking if"):
            ep = line.removeprefix("Checking ").strip()
            out[ep] = {"verdict": None, "reasons": [], "caveats": [], "partition_sizes": []}
            in_caveats = False
            continue
        if ep is None or not line or set(line) <= {"=", "-"}:
            continue
        entry = out[ep]
        if line.startswith(f"Model should perform well with {ep}"):
            verdict = line.rsplit(":", 1)[1].strip()
            if entry["verdict"] is None or rank.get(verdict, -1) > rank.get(entry["verdict"], -1):
                entry["verdict"] = verdict
            in_caveats = False
            continue
        if line.startswith("Caveats that have not been checked"):
            in_caveats = True
            continue
        if in_caveats and raw.startswith(" " * 5):
            entry["caveats"].append(line)
            continue
        in_caveats = False
        if line.startswith("Partition sizes:"):
            entry["partition_sizes"] = [int(x) for x in line.split("[", 1)[1].rstrip("]").split(",") if x.strip()]
            continue
        entry["reasons"].append(line)
    return out


# -- packaging --------------------------------------------------------------------------------------
def package(
    ctx, stage: Path, unet, mode: str, vae_dir: Path | None, opts: MobileOptions
) -> tuple[list[Path], dict[str, Any]]:
    """The ONNX Runtime layout first (in a temporary folder), then every graph converted to ``.ort``."""
    tmp, files, onnx_comps = onnx_layout(ctx, stage, unet, mode, vae_dir)  # the converter sees graphs only
    checks: dict[str, dict[str, Any]] = {}
    flavours: dict[str, dict[str, int]] = {}
    for name, info in onnx_comps.items():
        graphs = graphs_of(info)
        for g in graphs:
            check_ort_size(tmp / g["path"], name)
        # group graphs differ only in scales and biases: one check stands for all of them
        checks[name] = usability(tmp / graphs[0]["path"])
        flavours[name] = qdq_flavours(tmp / graphs[0]["path"])
    convert(tmp, stage, opts)
    comps: dict[str, Any] = {}
    for name, info in onnx_comps.items():
        entry = {k: v for k, v in info.items() if k not in ("graphs", "path")}
        if "graphs" in info:
            entry["graphs"] = [{**g, "path": _ort_path(g["path"])} for g in info["graphs"]]
            files += [stage / g["path"] for g in entry["graphs"]]
        else:
            entry["path"] = _ort_path(info["path"])
            files.append(stage / entry["path"])
        pol = ctx.profile.policy(name)
        if "int8" in entry.get("precision", "") and pol.mode == "int8":
            a = "A16" if "16" in pol.activation_type else "A8"
            entry["precision"] = f"int8 weights, {pol.activation_type} activations (W8{a} Q/DQ)"
        entry.update(
            runtime=RUNTIME,
            ort_format={
                "optimization_style": "Fixed",
                "optimization_level": opts.optimization_level,
                "target_platform": opts.target_platform,
                "execution_providers": list(opts.execution_providers),
                "provider_options": opts.provider_options,
                "operator_config": CONFIG,
                "qdq_flavours": flavours[name],
            },
            usability=checks[name],
        )
        comps[name] = entry
    files.append(stage / CONFIG)
    shutil.rmtree(tmp)
    return files, comps


def _ort_path(onnx_rel: str) -> str:
    return str(Path(onnx_rel).with_suffix(".ort"))


# -- running ----------------------------------------------------------------------------------------
class OrtFormatRunner(OrtRunner):
    """An ``.ort`` file on ONNX Runtime's CPU EP, with no further graph optimisation (as on a device)."""

    def __init__(self, path: Path, threads: int | None = None):
        super().__init__(path, threads, optimize=False)


def _runner(build: Path, info: dict[str, Any]):
    return component_runner(OrtFormatRunner, build, info)


def unet_runner(ctx, graphs: list[tuple[Path, dict]], opts: MobileOptions):
    """The checks run UNet variants as ``.ort`` files: each variant's folder converted once, cached."""
    src = graphs[0][0].parent

    def make(part: Path) -> None:
        onnx_dir = part / "onnx"
        onnx_dir.mkdir(parents=True)
        for p in sorted(src.iterdir()):  # the graphs and their weights only: the converter takes every .onnx
            if p.suffix == ".onnx":
                check_ort_size(p, "unet")
            if p.suffix == ".onnx" or p.name.endswith(".onnx_data"):
                try:
                    os.link(p, onnx_dir / p.name)  # no copy of the weights where the file system allows
                except OSError:
                    shutil.copy2(p, onnx_dir / p.name)
        convert(onnx_dir, part / "ort", opts)
        shutil.rmtree(onnx_dir)

    stage = (str(src.resolve()), opts.optimization_level, opts.target_platform)
    root = ctx.stages.folder("ort-format", *stage, make=make)
    return grouped(lambda p: OrtFormatRunner(root / "ort" / Path(p.name).with_suffix(".ort")), graphs)


class OrtMobileTarget(Target):
    name = "ort-mobile"
    description = "ONNX Runtime mobile: .ort + reduced-build operator config, static shapes (XNNPACK, QNN, ...)"
    runtime = "onnxruntime"
    install = "pip install onnxruntime"
    section = "onnxruntime"
    Options = MobileOptions

    def package(self, ctx, stage: Path, unet, mode: str, vae_dir: Path | None) -> tuple[list[Path], dict[str, Any]]:
        return package(ctx, stage, unet, mode, vae_dir, self.options)

    def runners(self) -> dict[str, Any]:
        return {RUNTIME: _runner}

    def unet_runner(self, ctx, graphs: list[tuple[Path, dict]]):
        return unet_runner(ctx, graphs, self.options)


TARGET = OrtMobileTarget
