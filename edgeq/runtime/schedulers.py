"""numpy schedulers that follow diffusers' DDIM, Euler discrete, DPM-Solver++ 2M and LCM step for step.

They read a diffusers ``scheduler_config.json`` (whatever scheduler class it names), as
``XScheduler.from_config`` does. Supported: beta schedules linear / scaled_linear, timestep spacing
leading / linspace / trailing, epsilon and v-prediction. Options that change the maths and are not
implemented (Karras sigmas, thresholding, SDE variants) are refused rather than ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeq.errors import EdgeqError
from edgeq.runtime import SCHEDULERS


@dataclass(frozen=True)
class NoiseSchedule:
    num_train_timesteps: int
    alphas_cumprod: np.ndarray  # float32, as diffusers computes it
    prediction_type: str
    timestep_spacing: str
    steps_offset: int
    config: dict[str, Any]

    @classmethod
    def from_config(cls, config: dict[str, Any], prediction_type: str | None = None) -> NoiseSchedule:
        n = int(config.get("num_train_timesteps", 1000))
        kind = config.get("beta_schedule", "linear")
        b0, b1 = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
        if config.get("trained_betas") is not None:
            betas = np.asarray(config["trained_betas"], np.float32)
        elif kind == "linear":
            betas = np.linspace(b0, b1, n, dtype=np.float32)
        elif kind == "scaled_linear":
            betas = np.linspace(b0**0.5, b1**0.5, n, dtype=np.float32) ** 2
        else:
            raise EdgeqError(
                f"beta schedule '{kind}' is not supported by edgeq's runtime", "supported: linear, scaled_linear"
            )
        ac = np.cumprod((1.0 - betas).astype(np.float32), dtype=np.float32)
        pred = prediction_type or config.get("prediction_type", "epsilon")
        if pred not in ("epsilon", "v_prediction"):
            raise EdgeqError(f"prediction type '{pred}' is not supported", "supported: epsilon, v_prediction")
        spacing = config.get("timestep_spacing", "leading")
        if spacing not in ("leading", "linspace", "trailing"):
            raise EdgeqError(f"timestep spacing '{spacing}' is not supported", "supported: leading, linspace, trailing")
        return cls(n, ac, pred, spacing, int(config.get("steps_offset", 0)), dict(config))


class Scheduler:
    """Common interface: ``set_timesteps``, ``scale_model_input``, ``step``, ``init_noise_sigma``.

    ``DEFAULTS`` are the diffusers class's own defaults, used for keys the config does not set
    (a PNDM config read as DDIM gets DDIM's ``clip_sample=True``, as in diffusers).
    """

    name = ""
    DEFAULTS: dict[str, Any] = {}
    timesteps: np.ndarray
    init_noise_sigma: float = 1.0
    # a stochastic sampler takes fresh noise at every step but the last (``step(..., noise=)``)
    needs_noise = False

    def __init__(self, schedule: NoiseSchedule):
        self.s = schedule

    def scale_model_input(self, sample: np.ndarray, step_index: int) -> np.ndarray:
        return sample

    def set_timesteps(self, n: int) -> None:
        raise NotImplementedError

    def step(
        self, model_output: np.ndarray, step_index: int, sample: np.ndarray, noise: np.ndarray | None = None
    ) -> np.ndarray:
        raise NotImplementedError


class DDIM(Scheduler):
    """diffusers.DDIMScheduler with eta = 0."""

    name = "ddim"
    DEFAULTS = {"timestep_spacing": "leading", "clip_sample": True, "set_alpha_to_one": True, "steps_offset": 0}

    def set_timesteps(self, n: int) -> None:
        s = self.s
        T = s.num_train_timesteps
        if s.timestep_spacing == "linspace":
            ts = np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
        elif s.timestep_spacing == "leading":
            ts = (np.arange(0, n) * (T // n)).round()[::-1].copy().astype(np.int64) + s.steps_offset
        else:
            ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
        self.timesteps = ts
        self.n = n
        self.final_alpha = np.float32(1.0) if self.s.config["set_alpha_to_one"] else s.alphas_cumprod[0]

    def step(self, model_output: np.ndarray, step_index: int, sample: np.ndarray, noise=None) -> np.ndarray:
        s = self.s
        t = int(self.timesteps[step_index])
        prev_t = t - s.num_train_timesteps // self.n
        a_t = s.alphas_cumprod[t]
        a_prev = s.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha
        b_t = 1 - a_t
        if s.prediction_type == "epsilon":
            x0 = (sample - b_t**0.5 * model_output) / a_t**0.5
            eps = model_output
        else:
            x0 = a_t**0.5 * sample - b_t**0.5 * model_output
            eps = a_t**0.5 * model_output + b_t**0.5 * sample
        if s.config["clip_sample"]:
            r = float(s.config.get("clip_sample_range", 1.0))
            x0 = np.clip(x0, -r, r)
        return (a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps).astype(np.float32)


def _sigmas(s: NoiseSchedule) -> np.ndarray:
    return (((1 - s.alphas_cumprod) / s.alphas_cumprod) ** 0.5).astype(np.float32)


class EulerDiscrete(Scheduler):
    """diffusers.EulerDiscreteScheduler (no churn, linear sigma interpolation, final sigma 0)."""

    name = "euler"
    DEFAULTS = {"timestep_spacing": "linspace", "steps_offset": 0}

    def set_timesteps(self, n: int) -> None:
        s = self.s
        T = s.num_train_timesteps
        if s.timestep_spacing == "linspace":
            ts = np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
        elif s.timestep_spacing == "leading":
            ts = (np.arange(0, n) * (T // n)).round()[::-1].copy().astype(np.float32) + s.steps_offset
        else:
            ts = (np.arange(T, 0, -T / n)).round().copy().astype(np.float32) - 1
        sig = np.interp(ts, np.arange(0, len(_sigmas(s))), _sigmas(s))
        self.sigmas = np.concatenate([sig, [0.0]]).astype(np.float32)
        self.timesteps = ts.astype(np.float32)
        smax = float(self.sigmas.max())
        self.init_noise_sigma = (
            smax if s.timestep_spacing in ("linspace", "trailing") else float(np.float32((smax**2 + 1) ** 0.5))
        )

    def scale_model_input(self, sample: np.ndarray, step_index: int) -> np.ndarray:
        sigma = self.sigmas[step_index]
        return (sample / ((sigma**2 + 1) ** 0.5)).astype(np.float32)

    def step(self, model_output: np.ndarray, step_index: int, sample: np.ndarray, noise=None) -> np.ndarray:
        sigma = self.sigmas[step_index]
        if self.s.prediction_type == "epsilon":
            x0 = sample - sigma * model_output
        else:
            x0 = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        derivative = (sample - x0) / sigma
        dt = self.sigmas[step_index + 1] - sigma
        return (sample + derivative * dt).astype(np.float32)


class DPMSolverPP2M(Scheduler):
    """diffusers.DPMSolverMultistepScheduler: dpmsolver++, order 2, midpoint, final sigma 0."""

    name = "dpmpp_2m"
    DEFAULTS = {"timestep_spacing": "linspace", "steps_offset": 0}

    def set_timesteps(self, n: int) -> None:
        s = self.s
        T = s.num_train_timesteps
        if s.timestep_spacing == "linspace":
            ts = np.linspace(0, T - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        elif s.timestep_spacing == "leading":
            ts = (np.arange(0, n + 1) * (T // (n + 1))).round()[::-1][:-1].copy().astype(np.int64) + s.steps_offset
        else:
            ts = np.arange(T, 0, -T / n).round().copy().astype(np.int64) - 1
        sig = np.interp(ts, np.arange(0, len(_sigmas(s))), _sigmas(s))
        self.sigmas = np.concatenate([sig, [0.0]]).astype(np.float32)
        self.timesteps = ts
        self.outputs: list[np.ndarray] = []
        self.lower_order_nums = 0

    @staticmethod
    def _alpha_sigma(sigma: np.float32) -> tuple[np.float32, np.float32]:
        alpha = np.float32(1.0) / np.float32((sigma**2 + 1) ** 0.5)
        return alpha, sigma * alpha

    def step(self, model_output: np.ndarray, step_index: int, sample: np.ndarray, noise=None) -> np.ndarray:
        i = step_index
        n = len(self.timesteps)
        alpha_s0, sigma_s0 = self._alpha_sigma(self.sigmas[i])
        if self.s.prediction_type == "epsilon":
            x0 = (sample - sigma_s0 * model_output) / alpha_s0
        else:
            x0 = alpha_s0 * sample - sigma_s0 * model_output
        lower_final = i == n - 1  # final sigma is zero: the last step is first order
        self.outputs = (self.outputs + [x0])[-2:]
        alpha_t, sigma_t = self._alpha_sigma(self.sigmas[i + 1])
        with np.errstate(divide="ignore"):
            lam_t = np.log(alpha_t) - np.log(sigma_t)
            lam_s0 = np.log(alpha_s0) - np.log(sigma_s0)
        h = lam_t - lam_s0
        if self.lower_order_nums < 1 or lower_final:
            out = (sigma_t / sigma_s0) * sample - alpha_t * (np.exp(-h) - 1.0) * x0
        else:
            # diffusers' "lower order second-to-last step" is order 2 here too, since 2 is the highest order
            alpha_s1, sigma_s1 = self._alpha_sigma(self.sigmas[i - 1])
            lam_s1 = np.log(alpha_s1) - np.log(sigma_s1)
            m0, m1 = self.outputs[-1], self.outputs[-2]
            r0 = (lam_s0 - lam_s1) / h
            d1 = (1.0 / r0) * (m0 - m1)
            out = (
                (sigma_t / sigma_s0) * sample
                - alpha_t * (np.exp(-h) - 1.0) * m0
                - 0.5 * alpha_t * (np.exp(-h) - 1.0) * d1
            )
        if self.lower_order_nums < 2:
            self.lower_order_nums += 1
        return np.asarray(out, np.float32)


class LCM(Scheduler):
    """diffusers.LCMScheduler: a consistency model's multistep sampler.

    Timesteps are taken evenly (by index) from the distillation schedule of
    ``original_inference_steps`` points (k = T / original steps: 999, 979, ... for 50); each step
    maps the model's prediction to the trajectory's origin with the boundary-condition scalings
    (sigma_data 0.5, ``timestep_scaling``) and re-noises it to the next timestep with fresh noise,
    except after the last step.
    """

    name = "lcm"
    DEFAULTS = {
        "timestep_spacing": "leading",
        "steps_offset": 0,
        "original_inference_steps": 50,
        "timestep_scaling": 10.0,
        "set_alpha_to_one": True,
        "clip_sample": False,
    }
    needs_noise = True

    def set_timesteps(self, n: int) -> None:
        s = self.s
        T = s.num_train_timesteps
        original = int(s.config["original_inference_steps"])
        if original > T:
            raise EdgeqError(
                f"the scheduler config's original_inference_steps ({original}) exceeds num_train_timesteps ({T})",
                "fix scheduler/scheduler_config.json",
            )
        if n > original:
            raise EdgeqError(
                f"an LCM model samples at most original_inference_steps = {original} steps, asked for {n}",
                f"use --steps {original} or fewer (LCM models are made for 1-8)",
            )
        origin = (np.arange(1, original + 1) * (T // original) - 1)[::-1].copy()
        idx = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
        self.timesteps = origin[idx].astype(np.int64)
        self.final_alpha = np.float32(1.0) if s.config["set_alpha_to_one"] else s.alphas_cumprod[0]

    def scalings(self, t: int) -> tuple[float, float]:
        """``get_scalings_for_boundary_condition_discrete``: (c_skip, c_out) at timestep ``t``."""
        sigma_data = 0.5
        st = t * float(self.s.config["timestep_scaling"])
        return sigma_data**2 / (st**2 + sigma_data**2), st / (st**2 + sigma_data**2) ** 0.5

    def step(self, model_output: np.ndarray, step_index: int, sample: np.ndarray, noise=None) -> np.ndarray:
        s = self.s
        t = int(self.timesteps[step_index])
        last = step_index == len(self.timesteps) - 1
        prev_t = t if last else int(self.timesteps[step_index + 1])
        a_t = s.alphas_cumprod[t]
        a_prev = s.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha
        b_t = 1 - a_t
        if s.prediction_type == "epsilon":
            x0 = (sample - b_t**0.5 * model_output) / a_t**0.5
        else:
            x0 = a_t**0.5 * sample - b_t**0.5 * model_output
        if s.config["clip_sample"]:
            r = float(s.config.get("clip_sample_range", 1.0))
            x0 = np.clip(x0, -r, r)
        c_skip, c_out = self.scalings(t)
        denoised = np.float32(c_out) * x0 + np.float32(c_skip) * sample
        if last:
            return denoised.astype(np.float32)
        if noise is None:
            raise ValueError("the LCM sampler needs noise for every step but the last")
        return (a_prev**0.5 * denoised + (1 - a_prev) ** 0.5 * noise).astype(np.float32)


def guidance_embedding(w: float, dim: int) -> np.ndarray:
    """The guidance-scale embedding an LCM UNet takes as ``timestep_cond``, shape [1, dim].

    diffusers' ``LatentConsistencyModelPipeline.get_guidance_scale_embedding`` for ``w`` (LCM's w is
    the pipeline's guidance scale minus one).
    """
    half = dim // 2
    freq = np.exp(np.arange(half, dtype=np.float32) * -np.float32(np.log(np.float32(10000.0)) / (half - 1)))
    emb = np.float32(w * 1000.0) * freq[None, :]
    out = np.concatenate([np.sin(emb), np.cos(emb)], axis=1)
    if dim % 2:
        out = np.pad(out, ((0, 0), (0, 1)))
    return out.astype(np.float32)


def make_scheduler(name: str, config: dict[str, Any], prediction_type: str | None = None) -> Scheduler:
    """A scheduler by name, configured from a diffusers scheduler config."""
    if (
        config.get("use_karras_sigmas")
        or config.get("thresholding")
        or config.get("use_exponential_sigmas")
        or config.get("use_beta_sigmas")
    ):
        raise EdgeqError(
            "the scheduler config asks for Karras/exponential/beta sigmas or thresholding",
            "edgeq's runtime implements the plain schedules; remove those options",
        )
    classes = {"ddim": DDIM, "euler": EulerDiscrete, "dpmpp_2m": DPMSolverPP2M, "lcm": LCM}
    if name not in classes:
        raise EdgeqError(f"unknown scheduler '{name}'", f"choose one of: {', '.join(SCHEDULERS)}")
    cls = classes[name]
    return cls(NoiseSchedule.from_config({**cls.DEFAULTS, **config}, prediction_type))
