"""Few-step models: the LCM runtime against diffusers, presets found offline from configs, and
tiny-lcm builds calibrated at the schedule they run, one timestep group per step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL, cli

from edgeq.errors import EdgeqError
from edgeq.models.presets import PRESETS

PROMPT = "a large red circle in the center on a blue background"


@pytest.fixture(scope="module")
def lcm_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny-lcm-cache")


@pytest.fixture(scope="module")
def lcm_export(tmp_path_factory) -> Path:
    from edgeq.frontend.export import export
    from edgeq.models.weights import resolve

    return export(resolve("tiny-lcm"), tmp_path_factory.mktemp("lcm") / "fp32", log=lambda *a: None).folder


def _weights() -> Path:
    from edgeq.models.weights import resolve

    return resolve("tiny-lcm").path


@pytest.mark.parametrize("steps", [1, 4])
def test_lcm_pipeline_matches_diffusers(lcm_export, steps, monkeypatch):
    """edgeq's runtime on the exported tiny-lcm against diffusers' LatentConsistencyModelPipeline, from the
    same initial latents and the same per-step noise (diffusers' draws replaced by edgeq's)."""
    import torch
    from diffusers import LatentConsistencyModelPipeline
    from diffusers.schedulers import scheduling_lcm

    from edgeq.runtime.pipeline import GenerateOptions, Pipeline

    ours = Pipeline(lcm_export)
    assert ours.p["guidance_embedding_dim"] == 256 and ours.p["scheduler"] == "lcm"
    lat = np.random.default_rng(11).standard_normal((1, 4, 8, 8), dtype=np.float32)
    got = ours.generate(GenerateOptions(prompt=PROMPT, steps=steps, latents=lat, seed=5))
    rng = np.random.default_rng(5)  # with given latents, edgeq's generator draws only the per-step noise
    monkeypatch.setattr(
        scheduling_lcm,
        "randn_tensor",
        lambda shape, **kw: torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)),
    )
    ref = LatentConsistencyModelPipeline.from_pretrained(_weights(), safety_checker=None, local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    want = ref(
        PROMPT,
        num_inference_steps=steps,
        guidance_scale=ours.p["guidance"],
        latents=torch.from_numpy(lat),
        height=32,
        width=32,
        output_type="np",
    ).images[0]
    want = (np.clip(want, 0, 1) * 255).round().astype(np.uint8)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2
    with pytest.raises(EdgeqError, match="no negative branch"):
        ours.generate(GenerateOptions(prompt=PROMPT, negative_prompt="blue", steps=steps))


def _folder(tmp_path: Path, name: str, scheduler: dict | None = None, unet: dict | None = None) -> Path:
    from edgeq.models.weights import resolve

    dst = tmp_path / name
    shutil.copytree(resolve("tiny-sd").path, dst)
    for rel, change in (("scheduler/scheduler_config.json", scheduler), ("unet/config.json", unet)):
        if change:
            cfg = json.loads((dst / rel).read_text())
            cfg.update(change)
            (dst / rel).write_text(json.dumps(cfg))
    return dst


def test_few_step_kinds_are_read_from_the_configs(tmp_path):
    from edgeq.models.weights import resolve

    lcm = resolve(str(_weights())).spec
    assert (lcm.scheduler, lcm.steps, lcm.guidance) == ("lcm", 4, 8.5)
    assert "timestep_cond" in [t.name for t in lcm.component("unet").inputs]
    turbo = resolve(
        str(_folder(tmp_path, "sd-turbo", {"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "trailing"}))
    ).spec
    assert (turbo.scheduler, turbo.steps, turbo.guidance) == ("euler", 4, 0.0)
    assert "timestep_cond" not in [t.name for t in turbo.component("unet").inputs]
    lora = resolve(str(_folder(tmp_path, "lcm-lora-fused", {"_class_name": "LCMScheduler"}))).spec
    assert (lora.scheduler, lora.steps, lora.guidance) == ("lcm", 4, 1.0)
    plain = resolve(str(_folder(tmp_path, "plain", {"timestep_spacing": "trailing"}))).spec
    sd15 = PRESETS["sd15"]  # trailing spacing alone is not Turbo: the family's defaults
    assert (plain.scheduler, plain.steps, plain.guidance) == (sd15.scheduler, sd15.steps, sd15.guidance)


def test_lcm_preset_on_a_unet_without_guidance_embedding_says_so(tmp_path):
    r = cli("export", "lcm-sd15", "--weights", str(_folder(tmp_path, "m")), "--out", str(tmp_path / "o"))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "no guidance embedding" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_steps_and_groups_options_are_checked_first(lcm_cache, tmp_path):
    r = cli("build", "tiny-lcm", "--steps", "2", "--groups", "3", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "--groups 3 is more than the 2 denoising steps" in r.stderr
    r = cli("build", "tiny-lcm", "--steps", "0", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "--steps must be at least 1" in r.stderr
    r = cli("build", "tiny-lcm", "--steps", "2", "--print-config")
    plan = json.loads(r.stdout)["plan"]
    assert (plan["steps"], plan["groups"], plan["guidance"]) == (2, 2, 5.0)
    assert "capped at the 2 denoising steps" in plan["groups_reason"]
    with pytest.raises(EdgeqError, match="at most original_inference_steps = 50"):
        from edgeq.runtime.schedulers import make_scheduler

        make_scheduler(
            "lcm", json.loads((_weights() / "scheduler" / "scheduler_config.json").read_text())
        ).set_timesteps(51)


def test_tiny_lcm_build_calibrates_each_step(lcm_cache, tmp_path):
    """A 2-step build: captured at 2 steps, batch 1 (guidance embedded), one group per step, all variants
    measured per step, and what per-step scales gain over one shared range in the report."""
    out = tmp_path / "out"
    r = cli(
        "build", "tiny-lcm", "--steps", "2", "--group-mode", "auto", *SMALL, "--out", str(out),
        "--cache-dir", str(lcm_cache),
    )  # fmt: skip
    assert r.returncode in (0, 3), r.stderr[-3000:]
    # the whole build's cost, printed right after the first FP32 UNet call of the capture (this module's cache
    # is fresh here)
    assert "build estimate from the first FP32 UNet call" in r.stdout and "--calib-calls" in r.stdout, r.stdout[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["pipeline"]["steps"] == 2 and m["pipeline"]["scheduler"] == "lcm"
    groups = m["quantization"]["groups"]
    assert [(g["t_min"], g["t_max"]) for g in groups] == [(999.0, 999.0), (499.0, 499.0)]
    rep = json.loads((out / "report.json").read_text())
    assert {"shared", "per-group"} <= set(rep["variants"])  # (ort-cpu's auto leaves gains out: see its profile)
    assert all(len(rows) == 2 for rows in rep["variants"].values())
    assert "What per-group scales gain over one shared range" in (out / "report.md").read_text()
    shard = next((lcm_cache).rglob("shard-00000.npz"))
    with np.load(shard) as z:
        assert z["unet.sample"].shape[:2] == (2, 1)  # two steps, batch 1
        assert z["unet.timestep_cond"].shape == (1, 256)
    from edgeq.runtime.pipeline import GenerateOptions, Pipeline
    from edgeq.targets import for_manifest

    img = Pipeline(out, runners=for_manifest(m).runners()).generate(GenerateOptions(prompt=PROMPT, seed=1))
    assert img.shape == (32, 32, 3) and img.std() > 1.0


def test_tiny_lcm_openvino_build_runs_in_genai(lcm_cache, tmp_path):
    """The openvino build of an LCM model is a GenAI folder: GenAI's LCM pipeline (guidance embedded, batch
    1) generates from it what edgeq's runtime generates, given the same initial latents and step noise."""
    ov = pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install 'edgeq[openvino]'")
    ov_genai = pytest.importorskip("openvino_genai", reason="OpenVINO GenAI is not installed")
    from edgeq.runtime.pipeline import GenerateOptions, Pipeline
    from edgeq.targets.openvino import _runner

    class Draws(ov_genai.Generator):
        """GenAI's generator giving the initial latents, then edgeq's per-step noise (GenAI's draw order)."""

        def __init__(self, latents: np.ndarray, seed: int):
            super().__init__()
            self.first, self.rng = latents, np.random.default_rng(seed)

        def next(self) -> float:
            return 0.0

        def randn_tensor(self, shape):
            if self.first is not None:
                out, self.first = self.first, None
                return ov.Tensor(out.copy())
            return ov.Tensor(self.rng.standard_normal(tuple(shape), dtype=np.float32))

        def seed(self, new_seed: int) -> None:
            pass

    out = tmp_path / "out"
    r = cli(
        "build", "tiny-lcm", "--target", "openvino", "--group-mode", "shared", *SMALL, "--out", str(out),
        "--cache-dir", str(lcm_cache),
    )  # fmt: skip
    assert r.returncode in (0, 3), r.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["genai"]["ready"] is True, m["genai"]
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "LCMScheduler"
    ours = Pipeline(out, runners={"openvino": _runner})
    theirs = ov_genai.Text2ImagePipeline(str(out), "CPU")
    lat = np.random.default_rng(3).standard_normal((1, 4, 8, 8), dtype=np.float32)
    for steps in (1, 4):
        a = ours.generate(GenerateOptions(prompt=PROMPT, steps=steps, latents=lat, seed=9))
        res = theirs.generate(
            PROMPT, width=32, height=32, num_inference_steps=steps, guidance_scale=m["pipeline"]["guidance"],
            generator=Draws(lat, 9),
        )  # fmt: skip
        b = np.array(res.data)[0]
        mse = float(np.mean((a.astype(np.float64) - b) ** 2))
        assert 10 * np.log10(255.0**2 / max(mse, 1e-12)) >= 30.0, steps


def _turbo(src: Path, dst: Path) -> Path:
    """A Turbo-configured copy of a tiny pipeline: Euler on trailing timesteps, as SD-Turbo ships."""
    shutil.copytree(src, dst)
    path = dst / "scheduler" / "scheduler_config.json"
    cfg = json.loads(path.read_text())
    cfg.update({"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "trailing"})
    path.write_text(json.dumps(cfg))
    return dst


def test_turbo_presets_are_found_offline_and_run_at_guidance_0(tiny_models, tmp_path):
    """sd-turbo / sdxl-turbo in the local Hugging Face cache are found by preset name and read as Turbo
    models; edgeq's runtime runs one at guidance 0 (batch 1) as diffusers does, from the same latents."""
    import torch
    from diffusers import StableDiffusionPipeline
    from test_weights_and_errors import fake_hf_cache

    from edgeq.frontend.export import export
    from edgeq.models.weights import resolve
    from edgeq.runtime.pipeline import GenerateOptions, Pipeline

    hub = tmp_path / "hub"
    fake_hf_cache(hub, "stabilityai/sd-turbo", _turbo(tiny_models["sd21"], tmp_path / "sd-turbo"))
    fake_hf_cache(hub, "stabilityai/sdxl-turbo", _turbo(tiny_models["sdxl"], tmp_path / "sdxl-turbo"))
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_CACHE", str(hub))
    try:
        import huggingface_hub.constants as hc

        mp.setattr(hc, "HF_HUB_CACHE", str(hub))
        xl = resolve("sdxl-turbo")
        assert xl.kind == "hf_cache" and (xl.spec.family, xl.spec.guidance, xl.spec.steps) == ("sdxl", 0.0, 4)
        src = resolve("sd-turbo")
        assert src.kind == "hf_cache" and (src.spec.scheduler, src.spec.guidance) == ("euler", 0.0)
        by_path = resolve(str(src.path))  # its cache folder says turbo too; the size comes from its configs
        assert (by_path.spec.scheduler, by_path.spec.guidance, by_path.spec.steps) == ("euler", 0.0, 4)
        folder = export(by_path, tmp_path / "fp32", log=lambda *a: None).folder
    finally:
        mp.undo()
    ours = Pipeline(folder)
    h, w = ours.p["resolution"]
    f = ours.p["vae_scale_factor"]
    lat = np.random.default_rng(0).standard_normal((1, 4, h // f, w // f), dtype=np.float32)
    calls: list[int] = []
    got = ours.generate(
        GenerateOptions(
            prompt="a red cat", steps=2, latents=lat, on_unet_input=lambda i, t, x: calls.append(len(x["sample"]))
        )
    )
    assert calls == [1, 1]  # guidance 0: no negative branch
    ref = StableDiffusionPipeline.from_pretrained(src.path, safety_checker=None, local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    want = ref(
        "a red cat", num_inference_steps=2, guidance_scale=0.0, latents=torch.from_numpy(lat),
        height=h, width=w, output_type="np",
    ).images[0]  # fmt: skip
    want = (np.clip(want, 0, 1) * 255).round().astype(np.uint8)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2
