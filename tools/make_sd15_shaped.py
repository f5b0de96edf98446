#!/usr/bin/env python
"""Write a full-size SD1.5-shaped pipeline with random weights as a diffusers folder.

UNet, VAE and CLIP text encoder have Stable Diffusion 1.5's configurations (860 M + 84 M + 123 M
parameters); the tokenizer is edgeq's small BPE vocabulary (token ids fit the 49408-row embedding).
Random weights: for build time, memory and latency of the real sizes, never for quality.

    python tools/make_sd15_shaped.py [--out build/sd15-shaped]
    edgeq build --target ort-cpu build/sd15-shaped
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = "a an the red blue green yellow cat dog photo of on in at small large background house tree sky".split()


def make(out: Path, seed: int = 0) -> Path:
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from edgeq.models.bpe import write_tokenizer

    if (out / "model_index.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(seed)
    vocab = write_tokenizer(tmp / "_tok", WORDS)
    tokenizer = CLIPTokenizer.from_pretrained(tmp / "_tok")
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=vocab - 2,
            eos_token_id=vocab - 1,
            pad_token_id=vocab - 1,
        )
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # diffusers' defaults are SD1.5's
    sched = PNDMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        num_train_timesteps=1000,
        steps_offset=1,
        set_alpha_to_one=False,
        skip_prk_steps=True,
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
    pipe.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(tmp / "_tok")
    tmp.rename(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "sd15-shaped")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(make(a.out, a.seed))


if __name__ == "__main__":
    main()
