"""An openvino build is also an OpenVINO GenAI folder: GenAI's own pipelines load it and generate
what edgeq's runtime generates from the same initial latents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL, cli

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install 'edgeq[openvino]'")
ov_genai = pytest.importorskip(
    "openvino_genai", reason="OpenVINO GenAI is not installed: pip install 'edgeq[openvino]'"
)

PROMPTS = (
    "a large red circle in the center on a blue background",
    "a small yellow square at the bottom left on a black background",
)


class GivenLatents(ov_genai.Generator):
    """GenAI's random generator replaced by fixed initial latents (GenAI draws them with randn_tensor)."""

    def __init__(self, latents: np.ndarray):
        super().__init__()
        self.latents = latents

    def next(self) -> float:
        return 0.0

    def randn_tensor(self, shape):
        assert tuple(shape) == self.latents.shape, (tuple(shape), self.latents.shape)
        return ov.Tensor(self.latents.copy())

    def seed(self, new_seed: int) -> None:
        pass


@pytest.fixture(scope="module")
def genai_build(target_build, tiny_sd_cache, tmp_path_factory) -> Path:
    """The suite's openvino build where it chose shared mode; otherwise a small shared one."""
    out, r = target_build("openvino")
    assert r.returncode == 0, r.stderr[-2000:]
    if json.loads((out / "manifest.json").read_text())["quantization"]["group_mode"] == "shared":
        return out
    out = tmp_path_factory.mktemp("genai") / "out"
    r = cli(
        "build", "tiny-sd", "--target", "openvino", "--group-mode", "shared", *SMALL, "--out", str(out),
        "--cache-dir", str(tiny_sd_cache),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def test_folder_follows_genai_contract(genai_build):
    out = genai_build
    m = json.loads((out / "manifest.json").read_text())
    assert m["genai"]["ready"] is True
    for comp in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        assert (out / comp / "openvino_model.xml").is_file() and (out / comp / "config.json").is_file(), comp
    for f in ("openvino_tokenizer.xml", "openvino_detokenizer.xml"):
        assert (out / "tokenizer" / f).is_file()
    assert json.loads((out / "model_index.json").read_text())["vae"] == ["diffusers", "AutoencoderKL"]
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "DDIMScheduler"  # the scheduler edgeq's pipeline runs for tiny-sd
    unet = ov.Core().read_model(str(out / "unet" / "openvino_model.xml"))
    ts = next(i for i in unet.inputs if "timestep" in i.get_names())
    assert ts.get_element_type() == ov.Type.i64 and ts.get_partial_shape() == ov.PartialShape([1])
    assert {"name": "timestep", "dtype": "int64", "shape": [1]} in m["components"]["unet"]["inputs"]
    assert "unet/openvino_model.xml" in m["artifacts"] and "tokenizer/openvino_tokenizer.bin" in m["artifacts"]


def test_genai_generates_what_edgeq_generates(genai_build):
    """GenAI's Text2ImagePipeline on the build folder as it is, from edgeq's initial latents: the same
    image as edgeq's runtime (30 dB PSNR or more); with its own generator it makes images too."""
    from edgeq.runtime.pipeline import GenerateOptions, Pipeline
    from edgeq.targets.openvino import _runner

    out = genai_build
    ours = Pipeline(out, runners={"openvino": _runner})
    p = ours.p
    h, w = p["resolution"]
    f = p["vae_scale_factor"]
    theirs = ov_genai.Text2ImagePipeline(str(out), "CPU")
    for i, prompt in enumerate(PROMPTS):
        lat = np.random.default_rng(i).standard_normal((1, p["latent_channels"], h // f, w // f), dtype=np.float32)
        a = ours.generate(GenerateOptions(prompt=prompt, latents=lat))
        res = theirs.generate(
            prompt,
            width=w,
            height=h,
            num_inference_steps=p["steps"],
            guidance_scale=p["guidance"],
            generator=GivenLatents(lat),
        )
        b = np.array(res.data)[0]
        assert b.shape == a.shape and b.dtype == np.uint8
        assert _psnr(a, b) >= 30.0, (prompt, _psnr(a, b))
    img = np.array(theirs.generate(PROMPTS[0], width=w, height=h, num_inference_steps=4).data)[0]
    assert img.shape == (h, w, 3) and img.std() > 1.0


def test_genai_image_to_image(genai_build):
    out = genai_build
    h, w = json.loads((out / "manifest.json").read_text())["pipeline"]["resolution"]
    pipe = ov_genai.Image2ImagePipeline(str(out), "CPU")
    image = np.zeros((1, h, w, 3), np.uint8)
    image[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = (255, 0, 0)
    res = np.array(pipe.generate(PROMPTS[0], ov.Tensor(image), strength=0.6, num_inference_steps=10).data)[0]
    assert res.shape == (h, w, 3) and res.std() > 1.0


def test_what_genai_cannot_feed_is_said():
    from edgeq.targets.openvino.genai import blocker

    em = {"model": {"family": "sd15"}, "pipeline": {"scheduler": "ddim"}}
    assert blocker("shared", em, "PNDMScheduler") is None
    assert "--group-mode shared" in blocker("per-group", em, "PNDMScheduler")
    assert "gains input" in blocker("gains", em, "PNDMScheduler")
    assert "genai" in blocker("shared", em, "PNDMScheduler", "off")
    dpm = {"model": {"family": "sd15"}, "pipeline": {"scheduler": "dpmpp_2m"}}
    assert blocker("shared", dpm, "PNDMScheduler") is None  # GenAI runs the model's own PNDM
    assert "GenAI implements" in blocker("shared", dpm, "DPMSolverMultistepScheduler")


def test_gains_build_writes_a_genai_folder_when_asked(tiny_sd_cache, tmp_path):
    """genai = "on": a gains build (which GenAI cannot feed) also gets genai/, a GenAI folder whose UNet
    is the shared-range graph; GenAI generates from it what edgeq's gains build generates, closely."""
    from edgeq.runtime.pipeline import GenerateOptions, Pipeline
    from edgeq.targets.openvino import _runner

    prof = tmp_path / "ov-genai.toml"
    prof.write_text('name = "ov-genai"\ndescription = "genai on"\nextends = "openvino"\n[openvino]\ngenai = "on"\n')
    out = tmp_path / "out"
    r = cli(
        "build", "tiny-sd", "--target", str(prof), "--group-mode", "gains", "--groups", "2", *SMALL,
        "--out", str(out), "--cache-dir", str(tiny_sd_cache),
    )  # fmt: skip
    assert r.returncode in (0, 3), r.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["quantization"]["group_mode"] == "gains"
    g = m["genai"]
    assert g["ready"] is True and g["folder"] == "genai" and "gains input" in g["reason"] and "shared" in g["unet"]
    sub = out / "genai"
    unet = ov.Core().read_model(str(sub / "unet" / "openvino_model.xml"))
    assert {n for i in unet.inputs for n in i.get_names()} == {"sample", "timestep", "encoder_hidden_states"}
    assert (
        "genai/unet/openvino_model.bin" in m["artifacts"] and "genai/tokenizer/openvino_tokenizer.xml" in m["artifacts"]
    )
    assert "## OpenVINO GenAI" in (out / "report.md").read_text() and "`genai/` runs" in (out / "report.md").read_text()
    ours = Pipeline(out, runners={"openvino": _runner})
    p = ours.p
    h, w = p["resolution"]
    f = p["vae_scale_factor"]
    theirs = ov_genai.Text2ImagePipeline(str(sub), "CPU")
    lat = np.random.default_rng(7).standard_normal((1, p["latent_channels"], h // f, w // f), dtype=np.float32)
    a = ours.generate(GenerateOptions(prompt=PROMPTS[0], latents=lat))
    res = theirs.generate(
        PROMPTS[0], width=w, height=h, num_inference_steps=p["steps"], guidance_scale=p["guidance"],
        generator=GivenLatents(lat),
    )  # fmt: skip
    assert _psnr(a, np.array(res.data)[0]) >= 25.0  # shared ranges against the gains build's per-group scales
