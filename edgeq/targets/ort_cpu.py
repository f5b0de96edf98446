"""ONNX Runtime CPU target: the Q/DQ ONNX graphs run as they are.

ORT fuses DequantizeLinear -> Conv/MatMul -> QuantizeLinear into QLinearConv / QLinearMatMul (and
MatMulInteger) kernels at session creation; U8S8 is their fast path on x86 with VNNI. Per-group
mode ships one graph per timestep group, all reading one weights file (each ORT session still
loads its own copy of the weights into memory: memory x groups, disk x 1). Gains mode ships one
graph whose activation scales follow the group through its ``edgeq_gains`` input (memory and disk
x 1; ``unet/gains.json`` holds the rows).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgeq.targets.base import Target
from edgeq.targets.common import copy_component, copy_pipeline_files


class OrtCpuTarget(Target):
    name = "ort-cpu"
    description = "ONNX Runtime on x86/ARM CPUs (W8A8 Q/DQ, U8S8)"
    runtime = "onnxruntime"
    cpu_kernels = True
    checks_run_as_deployed = True  # the package copies the checked graphs; both run them with OrtRunner
    install = "pip install onnxruntime"

    def package(self, ctx, stage: Path, unet, mode: str, vae_dir: Path | None) -> tuple[list[Path], dict[str, Any]]:
        return package_onnx(ctx, stage, unet, mode, vae_dir)

    def unet_runner(self, ctx, graphs: list[tuple[Path, dict]]):
        """The checks run UNet variants (Q/DQ ONNX graphs) with ONNX Runtime."""
        from edgeq.runtime.sessions import OrtRunner, grouped

        return grouped(OrtRunner, graphs)


TARGET = OrtCpuTarget


def package_onnx(ctx, stage: Path, unet, mode: str, vae_dir: Path | None) -> tuple[list[Path], dict[str, Any]]:
    """ONNX Runtime's deployable folder (the layout converting targets start from, too); returns its
    artifacts and the manifest's component entries."""
    from edgeq.quantize.gains import GAINS_FILE

    em = ctx.export_manifest
    files = copy_pipeline_files(ctx.export_dir, em, stage)
    components: dict[str, Any] = {}
    for name in em["components"]:
        if name.startswith("text_encoder"):
            f, info = copy_component(ctx.export_dir, em, name, stage)
            files += f
            components[name] = info
    for name in ("unet", "vae_decoder"):
        quantized = unet is not None if name == "unet" else vae_dir is not None
        if not quantized:
            f, base = copy_component(ctx.export_dir, em, name, stage)
            files += f
            components[name] = {**base, "runtime": "onnxruntime"}
            continue
        base = dict(em["components"][name])
        base.pop("validation", None)
        dst = stage / name
        dst.mkdir()
        shutil.copy2(ctx.export_dir / name / "config.json", dst / "config.json")
        files.append(dst / "config.json")
        if name == "unet" and mode == "per-group":
            for p in sorted(unet.per_group_dir.iterdir()):
                shutil.copy2(p, dst / p.name)
                files.append(dst / p.name)
            base.pop("path")
            base["graphs"] = [{"path": f"unet/model.g{g.index}.onnx", **g.to_dict()} for g in unet.groups]
            base["precision"] = "int8 (W8A8 Q/DQ), one graph per timestep group"
        elif name == "unet" and mode == "gains":
            for p in sorted(unet.gains_dir.iterdir()):
                if p.name != "done":
                    shutil.copy2(p, dst / p.name)
                    files.append(dst / p.name)
            base["path"] = "unet/model.onnx"
            base["gains"] = f"unet/{GAINS_FILE}"
            base["precision"] = "int8 (W8A8 Q/DQ), per-group activation scales through the edgeq_gains input"
        else:
            src = unet.shared_dir if name == "unet" else vae_dir
            for p in sorted(src.iterdir()):
                if p.suffix == ".onnx" or p.name.endswith(".onnx_data"):
                    shutil.copy2(p, dst / p.name)
                    files.append(dst / p.name)
            base["path"] = f"{name}/model.onnx"
            base["precision"] = "int8 (W8A8 Q/DQ)"
        base["runtime"] = "onnxruntime"
        components[name] = base
    return files, components
