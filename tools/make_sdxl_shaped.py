#!/usr/bin/env python
"""Write a full-size SDXL-shaped pipeline with random weights as a diffusers folder.

UNet, both text encoders and VAE have Stable Diffusion XL base 1.0's configurations (UNet 2.57 B,
CLIP ViT-L 123 M, OpenCLIP ViT-bigG with projection 695 M, VAE 84 M parameters); the tokenizers are
edgeq's small BPE vocabulary (token ids fit the 49408-row embeddings). Weights are written as
safetensors shards (``max_shard_size``), each component built, saved and freed in turn so the peak
is about one UNet in memory (10.3 GB in FP32). Random weights: for build time, memory and latency
of the real sizes, never for quality.

    python tools/make_sdxl_shaped.py [--out build/sdxl-shaped]
    edgeq build --target ort-cpu build/sdxl-shaped
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from make_sd15_shaped import WORDS  # noqa: E402

SHARD = "2GB"


def unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )


def text_encoders(vocab: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    ids = {"bos_token_id": vocab - 2, "eos_token_id": vocab - 1, "pad_token_id": vocab - 1}
    te = CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", **ids,
    )  # fmt: skip
    te2 = CLIPTextConfig(
        vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
        num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280, **ids,
    )  # fmt: skip
    return lambda: CLIPTextModel(te), lambda: CLIPTextModelWithProjection(te2)


def vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=1024,
        scaling_factor=0.13025,
    )


def make(out: Path, seed: int = 0, log=print) -> Path:
    """The folder, written under a temporary name and renamed when complete (reused if there)."""
    import torch
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTokenizer

    from edgeq.models.bpe import write_tokenizer

    if (out / "model_index.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.manual_seed(seed)
    vocab = write_tokenizer(tmp / "_tok", WORDS)
    tok = CLIPTokenizer.from_pretrained(tmp / "_tok")
    for name in ("tokenizer", "tokenizer_2"):
        tok.save_pretrained(tmp / name)
    shutil.rmtree(tmp / "_tok")
    te, te2 = text_encoders(vocab)
    parts = {"text_encoder": te, "text_encoder_2": te2, "vae": vae, "unet": unet}
    for name, build in parts.items():  # one component in memory at a time
        model = build()
        n = sum(p.numel() for p in model.parameters())
        log(f"{name}: {n / 1e6:.0f} M parameters, writing")
        model.save_pretrained(tmp / name, safe_serialization=True, max_shard_size=SHARD)
        del model
        gc.collect()
    sched = EulerDiscreteScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
    )
    sched.save_pretrained(tmp / "scheduler")
    index = {
        "_class_name": "StableDiffusionXLPipeline",
        "_diffusers_version": __import__("diffusers").__version__,
        "force_zeros_for_empty_prompt": True,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "image_encoder": [None, None],
        "feature_extractor": [None, None],
    }
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    tmp.rename(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "sdxl-shaped")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(make(a.out, a.seed))


if __name__ == "__main__":
    main()
