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


@pytest.fixture(scope="session")
def sd15_cache(tmp_path_factory) -> Path:
    """One cache folder for the small builds of the random SD1.5-structured pipeline (export, capture and
    statistics shared between targets and group modes)."""
    return tmp_path_factory.mktemp("sd15-cache")


SMALL = ("--num-calib", "4", "--num-heldout", "4")  # the gates' mechanics, not the full measurement
# The one tiny-sd build per shipped target that the suite shares; each target's tests read it.
TARGET_BUILDS: dict[str, tuple[str, ...]] = {
    "ort-cpu": (),  # the default measurement (64 held-out prompts): the suite's full-size gate check
    "openvino": ("--num-heldout", "32"),  # 32 held-out prompts: one adherence flip is 3 points of the 5 allowed
    "ort-mobile": ("--group-mode", "per-group", *SMALL),  # per-group: where .ort costs disk (weights per group)
    "ort-mobile-qnn": ("--groups", "1", *SMALL),
    "tensorrt": ("--num-calib", "16", "--num-heldout", "16"),  # its own opset-19 export: its own statistics
}


@pytest.fixture(scope="session")
def target_build(tmp_path_factory, tiny_sd_cache):
    """``target_build(name)`` -> (build folder, CLI result) of that target's shared tiny-sd build, built once."""
    done: dict[str, tuple[Path, object]] = {}

    def get(target: str):
        if target not in done:
            out = tmp_path_factory.mktemp(f"build-{target}") / "out"
            args = TARGET_BUILDS[target]
            done[target] = (
                out,
                cli(
                    "build", "tiny-sd", "--target", target, *args, "--out", str(out), "--cache-dir", str(tiny_sd_cache)
                ),
            )
        return done[target]

    return get


def run_without_torch(build: Path, png: Path, prompt: str, also_loaded: tuple[str, ...] = ()):
    """`edgeq run` in a fresh interpreter; fails (exit 3) if torch got imported or a runtime did not."""
    import subprocess

    code = (
        "import sys; from edgeq.cli.main import main; "
        f"rc = main(['run', {str(build)!r}, '--prompt', {prompt!r}, '-o', {str(png)!r}]); "
        f"bad = 'torch' in sys.modules or not all(m in sys.modules for m in {list(also_loaded)!r}); "
        "sys.exit(rc or (3 if bad else 0))"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def cli(*args: str, env: dict | None = None):
    """`python -m edgeq ARGS` in a fresh process, offline, with its output captured."""
    import os
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "edgeq", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def pytest_collection_modifyitems(config, items):
    """`slow` tests (minutes each) run with `-m slow` or EDGEQ_SLOW=1; otherwise skipped, saying so."""
    import os

    if "slow" in (config.getoption("-m") or "") or os.environ.get("EDGEQ_SLOW") == "1":
        return
    skip = pytest.mark.skip(
        reason="slow (several minutes on 2 cores): run with `python -m pytest -m slow` or EDGEQ_SLOW=1"
    )
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
