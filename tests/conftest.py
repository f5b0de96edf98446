"""Shared fixtures: tiny random pipelines (SD1.5 / SD2.1 / SDXL structure) and their exports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

FAMILIES = ("sd15", "sd21", "sdxl")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from models import build_pipeline

    root = tmp_path_factory.mktemp("models")
    return {f: build_pipeline(f, root) for f in FAMILIES}


@pytest.fixture(scope="session")
def tiny_exports(tiny_models, tmp_path_factory) -> dict[str, Path]:
    from edgeq.frontend.export import export
    from edgeq.models.weights import resolve

    root = tmp_path_factory.mktemp("exports")
    return {f: export(resolve(str(p)), root / f, log=lambda *_: None).folder for f, p in tiny_models.items()}


@pytest.fixture(scope="session")
def tiny_sd_cache(tmp_path_factory) -> Path:
    """One cache folder for every tiny-sd build in the session: export, captures and statistics are shared."""
    return tmp_path_factory.mktemp("tiny-sd-cache")
