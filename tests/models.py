"""Tiny random pipelines with the block structure of SD1.5, SD2.1 and SDXL, saved in diffusers layout.

Random weights are fine here: these check export fidelity and the runtime, not quantization.
"""

from __future__ import annotations

from pathlib import Path

WORDS = "a an the red blue green cat dog photo of on in at small large background house".split()


def build_pipeline(
    family: str,
    out: Path,
    seed: int = 0,
    max_position_embeddings: int = 77,
    model_max_length: int | None = 77,
    model_max_length_2: int | None = -1,
    name: str | None = None,
) -> Path:
    """Save a tiny random pipeline of ``family`` to ``out/(name or family)``.

    ``max_position_embeddings``: the text encoder(s)' positions; ``model_max_length``: the
    tokenizer's length (``None``: no length, transformers' "no limit" sentinel); for SDXL
    ``model_max_length_2`` is ``tokenizer_2``'s (-1: the same as the first tokenizer's).
    """
    import copy

    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from edgeq.models.bpe import write_tokenizer

    torch.manual_seed(seed)
    vocab = write_tokenizer(out / "_tok", WORDS)
    tokenizer = CLIPTokenizer.from_pretrained(out / "_tok")
    no_limit = int(1e30)  # what transformers gives a tokenizer whose config has no model_max_length
    if model_max_length != 77:
        tokenizer.model_max_length = no_limit if model_max_length is None else model_max_length
    tokenizer_2 = tokenizer
    if model_max_length_2 != -1 and model_max_length_2 != model_max_length:
        tokenizer_2 = copy.deepcopy(tokenizer)
        tokenizer_2.model_max_length = no_limit if model_max_length_2 is None else model_max_length_2

    def text_config(hidden: int, proj: int | None = None) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=max_position_embeddings,
            bos_token_id=vocab - 2,
            eos_token_id=vocab - 1,
            pad_token_id=vocab - 1,
            projection_dim=proj or hidden,
        )

    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    common = dict(
        sample_size=8,
        layers_per_block=1,
        block_out_channels=(32, 64),
        norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    sched_cfg = dict(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        num_train_timesteps=1000,
        steps_offset=1,
        set_alpha_to_one=False,
        skip_prk_steps=True,
    )
    if family == "sd15":
        unet = UNet2DConditionModel(cross_attention_dim=32, attention_head_dim=4, **common)
        te = CLIPTextModel(text_config(32))
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=te,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=PNDMScheduler(**sched_cfg),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    elif family == "sd21":
        unet = UNet2DConditionModel(
            cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True, **common
        )
        te = CLIPTextModel(text_config(32))
        sched = EulerDiscreteScheduler(
            prediction_type="v_prediction",
            **{k: v for k, v in sched_cfg.items() if k not in ("set_alpha_to_one", "skip_prk_steps")},
        )
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=te,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=sched,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    elif family == "sdxl":
        unet = UNet2DConditionModel(
            cross_attention_dim=64,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,
            transformer_layers_per_block=(1, 2),
            **common,
        )
        te = CLIPTextModel(text_config(32))
        te2 = CLIPTextModelWithProjection(text_config(32, proj=32))
        sched = EulerDiscreteScheduler(
            **{k: v for k, v in sched_cfg.items() if k not in ("set_alpha_to_one", "skip_prk_steps")}
        )
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=te,
            text_encoder_2=te2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=sched,
        )
    else:
        raise ValueError(family)
    pipe.save_pretrained(out / (name or family), safe_serialization=True)
    return out / (name or family)
