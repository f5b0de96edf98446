"""TensorRT target: TensorRT-ready ONNX everywhere, INT8 engines where an NVIDIA GPU is.

What the build folder holds, per component (text encoder, UNet, VAE decoder):

* ``<component>/model.onnx`` (+ ``model.onnx_data``): the graph TensorRT builds. The UNet carries the
  TensorRT Q/DQ flavour (symmetric INT8, Q/DQ on the inputs of Conv/MatMul/Gemm only); every float
  op is converted to FP16 in the graph itself (ONNX Runtime's float16 converter), because TensorRT
  11 builds strongly typed networks only: precision comes from the graph, not from builder flags.
  The timestep path up to the sinusoidal projection stays FP32 (``keep_fp32`` in the profile).
* ``trtexec.sh``: the equivalent ``trtexec`` commands (shapes, timing cache, workspace).
* ``trt_rules.txt``: :mod:`edgeq.targets.tensorrt.rules` run on every graph; a violation fails the build.
* ``<component>/model.plan`` (and ``model.g<i>.plan`` per timestep group) once engines are built, on
  a machine with an NVIDIA GPU and the ``tensorrt`` package; ``timing.cache`` beside them.

Until engines exist, the components run as ``tensorrt-simulated``: ONNX Runtime on the CPU executes
the very graphs TensorRT would build (INT8 Q/DQ arithmetic exactly, FP16 ops where ORT has FP16
kernels), so the gates say what quality to expect before any GPU is involved. Differences left:
TensorRT's kernels (fused conv+bias+activation, FP16 accumulation order, its own GELU/Softmax).

Per-group mode: one engine per timestep group; each engine embeds its own copy of the weights, so
engine size and GPU memory are x groups (on the SD1.5 UNet, about 0.9 GB per INT8 engine).

Modules: ``options`` (the ``[tensorrt]`` section), ``lowering`` (the FP16 graph), ``rules`` (the Q/DQ
rule checker), ``packaging`` (the folder, shape profiles, trtexec.sh), ``engines`` (builds on the
GPU), ``runner`` (a built engine). ``tensorrt`` itself is imported inside functions only.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgeq.targets.base import Target
from edgeq.targets.tensorrt.options import TrtOptions


class TensorRtTarget(Target):
    """NVIDIA GPUs: packaged as TensorRT's ONNX, checked on the CPU, compiled to engines on the GPU."""

    name = "tensorrt"
    description = "TensorRT INT8 engines for NVIDIA GPUs (Jetson included)"
    runtime = "tensorrt"
    install = "pip install 'edgeq[tensorrt]' (needs an NVIDIA GPU to build engines)"
    section = "tensorrt"
    Options = TrtOptions
    needs_runtime_to_build = False  # the ONNX, the rules and the CPU simulation need no TensorRT
    compiles_on_device = True

    def _opts(self, ctx=None) -> TrtOptions:
        """The validated ``[tensorrt]`` section, or one built from the raw section (older profile loaders)."""
        profile = self.profile if self.profile is not None else getattr(ctx, "profile", None)
        if profile is None:
            return TrtOptions()
        opts = getattr(profile, "target_options", None)
        if isinstance(opts, TrtOptions):
            return opts
        raw = opts if isinstance(opts, dict) else profile.runtime_options
        return TrtOptions.from_profile(raw, str(getattr(profile, "path", "the profile")))

    # -- the build ------------------------------------------------------------------------------------
    def package(self, ctx, stage: Path, unet, mode: str, vae_dir: Path | None) -> tuple[list[Path], dict[str, Any]]:
        from edgeq.targets.tensorrt.packaging import package

        return package(ctx, stage, unet, mode, vae_dir, self._opts(ctx))

    def unet_runner(self, ctx, graphs: list[tuple[Path, dict]]):
        """The build's variant checks run TensorRT's graphs (FP16 + Q/DQ) on the CPU: the simulation."""
        from edgeq.runtime.sessions import OrtRunner, grouped
        from edgeq.targets.tensorrt.lowering import to_trt_onnx

        opts = self._opts(ctx)

        def lowered(path: Path) -> Path:  # converted once per graph and options, in the build cache
            def make(tmp: Path) -> None:
                to_trt_onnx(path, tmp / "model.onnx", opts)

            key = (str(path.resolve()), path.stat().st_mtime_ns, opts)
            return ctx.stages.folder("trt-sim", *key, make=make) / "model.onnx"

        return grouped(lambda path: OrtRunner(lowered(path)), graphs)

    def runners(self) -> dict[str, Any]:
        """Engines where built; until then ONNX Runtime runs TensorRT's graphs (the CPU simulation)."""
        from edgeq.runtime.pipeline import default_runner
        from edgeq.targets.tensorrt.engines import ENGINE
        from edgeq.targets.tensorrt.packaging import SIMULATED
        from edgeq.targets.tensorrt.runner import engine_runner

        return {SIMULATED: default_runner, ENGINE: engine_runner}

    # -- the engine stage -----------------------------------------------------------------------------
    def engines_status(self, ctx, folder: Path) -> dict[str, Any]:
        from edgeq.targets.tensorrt.engines import unavailable_reason

        sim = "CPU simulation: ONNX Runtime runs the TensorRT graphs (INT8 Q/DQ exact, FP16 float ops)"
        finish_cmd = (
            f"on a machine with an NVIDIA GPU and TensorRT: edgeq engines {folder} (or bash {folder}/trtexec.sh)"
        )
        if ctx.opts.onnx_only:
            return {"built": False, "reason": "--onnx-only", "checks": sim, "finish": finish_cmd}
        reason = unavailable_reason()
        if reason:
            return {"built": False, "reason": reason, "checks": sim, "finish": finish_cmd}
        return {"built": False, "pending": True, "reason": "built after the CPU-simulated checks pass", "checks": sim}

    def deployed_unet_runner(self, folder: Path, manifest: dict[str, Any]):
        """The engines, once built (the checks then measure them)."""
        from edgeq.targets.tensorrt.engines import ENGINE
        from edgeq.targets.tensorrt.runner import engine_runner

        info = manifest["components"].get("unet", {})
        return engine_runner(folder, info) if info.get("runtime") == ENGINE else None

    def finish(self, folder: Path, ctx, held_cap, report, log=print):
        """After the CPU-simulated checks: engines and the GPU checks where possible.

        The simulated report is kept as ``report_cpu_simulation.{json,md}``; with engines, ``report.*``
        is rewritten from checks that run the engines.
        """
        from edgeq.manifest import artifact_table, read_manifest, write_manifest
        from edgeq.stages.checks import check_folder

        for ext in ("json", "md"):
            shutil.copy2(folder / f"report.{ext}", folder / f"report_cpu_simulation.{ext}")
        manifest = read_manifest(folder)
        manifest["artifacts"].update(artifact_table(folder, ["report_cpu_simulation.json", "report_cpu_simulation.md"]))
        status = manifest.get("engines_status", {})
        if status.get("pending") and not report.passed:
            manifest["engines_status"] = {
                **status,
                "pending": False,
                "reason": "the CPU-simulated gates failed; no engines built",
            }
        write_manifest(folder, manifest)
        if not status.get("pending") or not report.passed:
            return report
        self.build_engines(folder, log)
        return check_folder(folder, ctx=ctx, held_cap=held_cap, log=log)

    def build_engines(self, folder: Path, log=print) -> dict[str, Any]:
        """Build the engines of a build folder and record them in its manifest (``engines_status``)."""
        from edgeq.targets.tensorrt.engines import engines_and_status

        return engines_and_status(folder, self._opts() if self.profile is not None else None, log)


TARGET = TensorRtTarget
