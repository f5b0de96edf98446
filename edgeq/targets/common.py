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
