"""tiny-sd: found offline through its preset, exported, and its deployable follows prompts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeq.models.weights import PACKAGE_ROOT, resolve
from edgeq.verify.adherence import adherence

HELDOUT = Path(__file__).resolve().parents[1] / "calibration_data" / "tiny-sd" / "heldout.txt"


@pytest.fixture(scope="module")
def tiny_sd_build(tmp_path_factory) -> Path:
    from edgeq.frontend.export import export

    return export(resolve("tiny-sd"), tmp_path_factory.mktemp("tiny") / "build", log=lambda *_: None).folder


def test_found_offline_and_loads_with_diffusers():
    src = resolve("tiny-sd")
    assert src.kind == "embedded" and src.path == PACKAGE_ROOT / "models/tiny_sd/weights"
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "from diffusers import StableDiffusionPipeline as P; "
            f"p = P.from_pretrained({str(src.path)!r}, local_files_only=True); print(type(p.unet).__name__)",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 0 and "UNet2DConditionModel" in r.stdout, r.stderr
    size = sum(f.stat().st_size for f in src.path.rglob("*") if f.is_file())
    assert size <= 30 * 2**20


def test_sd15_block_structure():
    import json

    cfg = json.loads((resolve("tiny-sd").path / "unet" / "config.json").read_text())
    assert set(cfg["down_block_types"]) == {"CrossAttnDownBlock2D", "DownBlock2D"}
    assert set(cfg["up_block_types"]) == {"UpBlock2D", "CrossAttnUpBlock2D"}
    assert cfg["mid_block_type"] == "UNetMidBlock2DCrossAttn"


def test_edgeq_run_generates_an_image(tiny_sd_build, tmp_path):
    out = tmp_path / "x.png"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeq",
            "run",
            str(tiny_sd_build),
            "--prompt",
            "a large red circle in the center on a blue background",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    from PIL import Image

    assert Image.open(out).size == (32, 32)


def test_deployable_follows_heldout_prompts(tiny_sd_build):
    """The exported FP32 build, run by the torch-free runtime, on all held-out prompts."""
    from edgeq.runtime.pipeline import GenerateOptions, Pipeline

    pipe = Pipeline(tiny_sd_build)
    prompts = [p for p in HELDOUT.read_text().split("\n") if p]
    images = [pipe.generate(GenerateOptions(prompt=p, seed=1000 + i)) for i, p in enumerate(prompts)]
    score = adherence(prompts, images)
    assert score.colour >= 80.0 and score.shape >= 60.0, score
