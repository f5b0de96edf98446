"""manifest.json: what a build folder holds, how it was made, and a check that it is intact."""

from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from edgeq.errors import EdgeqError
from edgeq.fsutil import sha256_file, write_json

MANIFEST = "manifest.json"
FORMAT = 1
_LIBS = (
    "edgeq",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-extensions",
    "torch",
    "diffusers",
    "transformers",
    "openvino",
    "tensorrt",
    "nncf",
    "ray",
)


def library_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for lib in _LIBS:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return out


def artifact_table(folder: Path, paths: list[str]) -> dict[str, dict[str, Any]]:
    return {p: {"bytes": (folder / p).stat().st_size, "sha256": sha256_file(folder / p)} for p in sorted(paths)}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    write_json(folder / MANIFEST, {"format": FORMAT, **manifest})


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise EdgeqError(f"build folder {folder} does not exist", "make one with `edgeq export MODEL --out DIR`")
    if not path.is_file():
        raise EdgeqError(
            f"{folder} has no {MANIFEST}, so it is not an edgeq build (or its build did not finish)",
            "run `edgeq export` or `edgeq build` again",
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise EdgeqError(f"{path} is not valid JSON ({e})", "the build is damaged: build it again") from None
    if data.get("format") != FORMAT:
        raise EdgeqError(
            f"{path} has format {data.get('format')}, this edgeq reads format {FORMAT}",
            "rebuild it with this edgeq version",
        )
    return data


def check_artifacts(folder: Path, manifest: dict[str, Any]) -> None:
    """Every artifact present with its recorded size (cheap: the export's reuse check). The sha256 of
    every file is :func:`edgeq.runtime.integrity.verify`'s."""
    for rel, info in manifest.get("artifacts", {}).items():
        p = folder / rel
        if not p.is_file():
            raise EdgeqError(f"{p} is missing from the build", "rebuild, or copy the whole build folder")
        size = p.stat().st_size
        if size != info["bytes"]:
            raise EdgeqError(
                f"{p} has {size} bytes, the manifest expects {info['bytes']} (truncated or replaced?)",
                "rebuild, or copy the build folder again",
            )
