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
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    return {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "dpmpp_2m": DPMSolverMultistepScheduler}[name]


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
    for i, t in enumerate(ref.timesteps):
        model_out = rng.standard_normal(x.shape).astype(np.float32)
        want = ref.scale_model_input(xr, t).numpy()
        np.testing.assert_allclose(ours.scale_model_input(x, i), want, rtol=0, atol=1e-5 * float(np.abs(want).max()))
        xr = ref.step(torch.from_numpy(model_out), t, xr).prev_sample
        x = ours.step(model_out, i, x)
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
