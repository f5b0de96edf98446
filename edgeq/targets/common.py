"""What every target's build folder shares with the FP32 export: tokenizers, scheduler, index."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


def copy_pipeline_files(export_dir: Path, export_manifest: dict[str, Any], stage: Path) -> list[Path]:
    out = []
    for tok in export_manifest["tokenizers"].values():
        src = export_dir / Path(tok["path"]).parent
        shutil.copytree(src, stage / src.name)
        out += sorted((stage / src.name).iterdir())
    shutil.copytree(export_dir / "scheduler", stage / "scheduler")
    shutil.copy2(export_dir / "model_index.json", stage / "model_index.json")
    out += [stage / "scheduler" / "scheduler_config.json", stage / "model_index.json"]
    return out


def copy_component(
    export_dir: Path, export_manifest: dict[str, Any], name: str, stage: Path
) -> tuple[list[Path], dict]:
    """A component kept in FP32: its graph (and external data) copied as exported."""
    info = dict(export_manifest["components"][name])
    src = export_dir / Path(info["path"]).parent
    shutil.copytree(src, stage / src.name, ignore=shutil.ignore_patterns(".*"))  # no leftover temp files
    files = sorted((stage / src.name).iterdir())
    info["precision"] = "fp32"
    info.pop("validation", None)
    return files, info


def graphs_of(info: dict[str, Any]) -> list[dict[str, Any]]:
    """A manifest component's graphs: its per-group graphs, or itself."""
    return info["graphs"] if "graphs" in info else [info]


def onnx_layout(ctx, stage: Path, unet, mode: str, vae_dir: Path | None) -> tuple[Path, list[Path], dict[str, Any]]:
    """ONNX Runtime's layout in ``stage/.onnx`` for a target to convert from.

    Tokenizers, scheduler, index and configs move over to ``stage`` as they are; the graphs (and
    their weights) stay in the temporary folder, which the caller removes after converting them.
    Returns (temporary folder, moved files, ONNX Runtime's component entries).
    """
    from edgeq.targets.ort_cpu import package_onnx

    tmp = stage / ".onnx"
    onnx_files, comps = package_onnx(ctx, tmp, unet, mode, vae_dir)
    graphs = {tmp / g["path"] for info in comps.values() for g in graphs_of(info)}
    files: list[Path] = []
    for f in onnx_files:
        if f not in graphs and not f.name.endswith(".onnx_data"):
            dst = stage / f.relative_to(tmp)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(f), dst)
            files.append(dst)
    return tmp, files, comps
