"""The numpy schedulers against diffusers', step for step."""

from __future__ import annotations

import numpy as np
import pytest

from edgeq.errors import EdgeqError
from edgeq.runtime.schedulers import SCHEDULERS, make_scheduler

BASE = dict(
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    num_train_timesteps=1000,
    steps_offset=1,
    set_alpha_to_one=False,
    clip_sample=False,
)


def _diffusers(name: str):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, LCMScheduler

    return {
        "ddim": DDIMScheduler,
        "euler": EulerDiscreteScheduler,
        "dpmpp_2m": DPMSolverMultistepScheduler,
        "lcm": LCMScheduler,
    }[name]


@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [4, 20, 25])
def test_matches_diffusers_step_for_step(name, spacing, prediction, steps):
    import torch

    cfg = dict(BASE, timestep_spacing=spacing, prediction_type=prediction)
    ref = _diffusers(name).from_config(cfg)
    ref.set_timesteps(steps)
    ours = make_scheduler(name, cfg)
    ours.set_timesteps(steps)
    np.testing.assert_allclose(ours.timesteps, ref.timesteps.numpy(), rtol=0, atol=1e-4)
    assert ours.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma), rel=1e-6)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32) * np.float32(ours.init_noise_sigma)
    xr = torch.from_numpy(x.copy())
    g_ref, g_ours = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for i, t in enumerate(ref.timesteps):
        model_out = rng.standard_normal(x.shape).astype(np.float32)
        want = ref.scale_model_input(xr, t).numpy()
        np.testing.assert_allclose(ours.scale_model_input(x, i), want, rtol=0, atol=1e-5 * float(np.abs(want).max()))
        xr = ref.step(torch.from_numpy(model_out), t, xr, generator=g_ref).prev_sample
        # a stochastic sampler's noise: the same draws diffusers makes from its generator
        last = i == len(ref.timesteps) - 1
        noise = None if not ours.needs_noise or last else torch.randn(x.shape, generator=g_ours).numpy()
        x = ours.step(model_out, i, x, noise=noise)
        scale = float(np.abs(xr.numpy()).max())
        assert float(np.abs(x - xr.numpy()).max()) <= 1e-4 * scale, f"step {i} diverged"


def test_class_defaults_follow_diffusers():
    """A PNDM-style config without clip_sample gives DDIM's default clip_sample=True, as diffusers does."""
    from diffusers import DDIMScheduler

    cfg = {k: v for k, v in BASE.items() if k != "clip_sample"}
    ours = make_scheduler("ddim", cfg)
    assert ours.s.config["clip_sample"] is DDIMScheduler.from_config(cfg).config.clip_sample is True


def test_unsupported_options_are_refused():
    with pytest.raises(EdgeqError, match="Karras"):
        make_scheduler("euler", dict(BASE, use_karras_sigmas=True))
    with pytest.raises(EdgeqError, match="unknown scheduler"):
        make_scheduler("pndm", BASE)
    with pytest.raises(EdgeqError, match="beta schedule"):
        make_scheduler("ddim", dict(BASE, beta_schedule="squaredcos_cap_v2"))


@pytest.mark.parametrize("dim", [256, 257])
def test_guidance_embedding_matches_diffusers(dim):
    import torch
    from diffusers import LatentConsistencyModelPipeline

    from edgeq.runtime.schedulers import guidance_embedding

    for w in (0.0, 1.5, 7.5):
        want = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, torch.tensor([w]), dim).numpy()
        # float32 exp differs by an ulp between numpy and torch; at w * 1000 = 7500 that is ~1e-4 rad
        np.testing.assert_allclose(guidance_embedding(w, dim), want, rtol=0, atol=5e-4)


def test_lcm_refuses_more_steps_than_its_distillation_schedule():
    cfg = dict(BASE, original_inference_steps=8)
    with pytest.raises(EdgeqError, match="at most original_inference_steps = 8"):
        make_scheduler("lcm", cfg).set_timesteps(9)
