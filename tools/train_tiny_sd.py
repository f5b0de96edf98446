#!/usr/bin/env python
"""Generate the shapes-world data set and train tiny-sd, edgeq's embedded default model.

tiny-sd is built like Stable Diffusion 1.5 (AutoencoderKL with 4 latent channels, a CLIP text
encoder with a CLIP-format BPE tokenizer, a UNet2DConditionModel with SD1.5's block types,
scaled-linear 1000-step schedule, epsilon prediction), only small, and trained on 32x32 procedural
images of one coloured shape on a coloured background. Everything is deterministic from --seed.

    python tools/train_tiny_sd.py --out edgeq/models/tiny_sd/weights

Stages: data set -> VAE -> latent scale -> text encoder + UNet (jointly) -> save (diffusers layout)
-> FP32 sample grid and adherence on the held-out prompts. The text encoder is trained together
with the UNet rather than kept at random initialisation: a random CLIP encoder does carry the
words, but a trained one separates "red circle" from "red background" far sooner, which matters
on a CPU budget of minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgeq.models.bpe import write_tokenizer  # noqa: E402
from edgeq.verify.adherence import adherence, all_scenes, render  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 32
HELDOUT_EVERY = 10  # every 10th scene (after a seeded shuffle) is never shown in training


def split_scenes(seed: int):
    scenes = all_scenes()
    order = np.random.default_rng(seed).permutation(len(scenes))
    heldout = [scenes[i] for i in order[::HELDOUT_EVERY]]
    train = [scenes[i] for i in order if i not in set(order[::HELDOUT_EVERY])]
    return train, heldout


CAPTION_WORDS = (
    "a an small large red green blue yellow white black circle square triangle at in the top bottom "
    "left right center on background of and with photo"
).split()


def build_models(vocab_size: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=IMAGE_SIZE,
    )
    text_cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        projection_dim=64,
    )
    text_encoder = CLIPTextModel(text_cfg)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4,  # the VAE downsamples by 4: 32 px images, 8x8 latents
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=(64, 96, 128),
        layers_per_block=1,
        cross_attention_dim=64,
        attention_head_dim=4,
        norm_num_groups=32,
    )
    return vae, text_encoder, unet


def make_dataset(train_scenes, n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(train_scenes), n)
    imgs = np.stack([render(train_scenes[i], IMAGE_SIZE, rng) for i in tqdm(idx, desc="data set", leave=False)])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, [train_scenes[i].caption for i in idx]


def train_vae(vae, data: torch.Tensor, steps: int, batch: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    vae.train()
    bar = tqdm(range(steps), desc="vae")
    for _ in bar:
        x = data[torch.randint(0, len(data), (batch,), generator=g)]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / x[0].numel()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval()


@torch.no_grad()
def encode_all(vae, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for i in range(0, len(data), 256):
        post = vae.encode(data[i : i + 256]).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def train_unet(unet, text_encoder, tokenizer, means, stds, captions, scale, steps, batch, seed, log):
    from diffusers import DDPMScheduler

    noise_sched = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000
    )
    g = torch.Generator().manual_seed(seed)
    ids_all = tokenize(tokenizer, captions)
    empty_ids = tokenize(tokenizer, [""])
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    warm = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    ema_unet = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    ema_text = {k: v.detach().clone() for k, v in text_encoder.state_dict().items()}
    unet.train()
    text_encoder.train()
    alphas = noise_sched.alphas_cumprod
    bar = tqdm(range(steps), desc="unet+text")
    for step in bar:
        idx = torch.randint(0, len(means), (batch,), generator=g)
        z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=g)) * scale
        ids = ids_all[idx].clone()
        drop = torch.rand(batch, generator=g) < 0.1  # unconditional share for classifier-free guidance
        ids[drop] = empty_ids
        t = torch.randint(0, 1000, (batch,), generator=g)
        eps = torch.randn(z0.shape, generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        cond = text_encoder(ids)[0]
        pred = unet(zt, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, model in ((ema_unet, unet), (ema_text, text_encoder)):
                for k, v in model.state_dict().items():
                    if v.dtype.is_floating_point:
                        ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 500 == 0:
            log(f"unet step {step} loss {loss.item():.4f}")
    unet.load_state_dict(ema_unet)
    text_encoder.load_state_dict(ema_text)
    unet.eval()
    text_encoder.eval()


def evaluate(pipe_dir: Path, prompts: list[str], seed: int, grid_path: Path | None, steps: int, guidance: float):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from PIL import Image

    pipe = StableDiffusionPipeline.from_pretrained(pipe_dir, local_files_only=True, safety_checker=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    images = []
    for i in range(0, len(prompts), 16):
        g = torch.Generator().manual_seed(seed + i)
        out = pipe(
            prompts[i : i + 16],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=g,
            height=IMAGE_SIZE,
            width=IMAGE_SIZE,
            output_type="np",
        ).images
        images += [np.clip(np.round(im * 255), 0, 255).astype(np.uint8) for im in out]
    result = adherence(prompts, images)
    if grid_path is not None:
        cols = 8
        n = min(len(images), 32)
        rows = math.ceil(n / cols)
        grid = np.zeros((rows * IMAGE_SIZE, cols * IMAGE_SIZE, 3), np.uint8)
        for k in range(n):
            r, c = divmod(k, cols)
            grid[r * IMAGE_SIZE : (r + 1) * IMAGE_SIZE, c * IMAGE_SIZE : (c + 1) * IMAGE_SIZE] = images[k]
        grid_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(
            grid_path, optimize=True
        )
    return result


def write_prompt_sets(train_scenes, heldout_scenes, seed: int) -> None:
    rng = np.random.default_rng(seed + 1)
    calib = [train_scenes[i].caption for i in rng.choice(len(train_scenes), 64, replace=False)]
    held = [s.caption for s in heldout_scenes[:64]]
    d = ROOT / "calibration_data" / "tiny-sd"
    d.mkdir(parents=True, exist_ok=True)
    (d / "calibration.txt").write_text("\n".join(calib) + "\n")
    (d / "heldout.txt").write_text("\n".join(held) + "\n")


def heldout_prompts() -> list[str]:
    return [p for p in (ROOT / "calibration_data" / "tiny-sd" / "heldout.txt").read_text().split("\n") if p]


def evaluate_saved(args) -> None:
    """Held-out adherence of a saved model (DDIM, the preset's steps and guidance) into its summary."""
    torch.set_num_threads(args.threads)
    res = evaluate(
        args.out, heldout_prompts(), 1234, ROOT / "docs" / "tiny-sd-fp32-heldout.png", args.eval_steps, args.guidance
    )
    summary_path = args.out / "training_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary["adherence_fp32"] = res.to_dict()
    summary["eval"] = {
        "scheduler": "ddim",
        "steps": args.eval_steps,
        "guidance": args.guidance,
        "seed": 1234,
        "prompts": "calibration_data/tiny-sd/heldout.txt",
    }
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"FP32 adherence on {res.n} held-out prompts: {res.to_dict()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "edgeq" / "models" / "tiny_sd" / "weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-images", type=int, default=20000)
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--unet-steps", type=int, default=4500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--eval-steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--eval-only",
        action="store_true",
        help="re-score the model in --out on the held-out prompts and redraw the grid; no training",
    )
    args = ap.parse_args()
    if args.eval_only:
        evaluate_saved(args)
        return

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()
    stage = args.out.parent / (args.out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    log_lines: list[str] = []

    def log(msg: str) -> None:
        line = f"[{time.time() - t_start:7.1f}s] {msg}"
        log_lines.append(line)
        tqdm.write(line)

    train_scenes, heldout_scenes = split_scenes(args.seed)
    write_prompt_sets(train_scenes, heldout_scenes, args.seed)
    data, captions = make_dataset(train_scenes, args.num_images, args.seed)
    log(f"data set: {len(data)} images of {len(train_scenes)} training scenes; {len(heldout_scenes)} held out")

    from transformers import CLIPTokenizer

    vocab_size = write_tokenizer(stage / "tokenizer", CAPTION_WORDS)
    tokenizer = CLIPTokenizer.from_pretrained(stage / "tokenizer")
    vae, text_encoder, unet = build_models(vocab_size)
    n_params = {
        k: sum(p.numel() for p in m.parameters())
        for k, m in {"vae": vae, "text_encoder": text_encoder, "unet": unet}.items()
    }
    log(f"parameters: {n_params}")

    t0 = time.time()
    train_vae(vae, data, args.vae_steps, 32, args.seed)
    means, stds = encode_all(vae, data)
    with torch.no_grad():
        rec = vae.decode(means[:256]).sample
        mse = F.mse_loss((rec.clamp(-1, 1) + 1) / 2, (data[:256] + 1) / 2).item()
    scale = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scale)
    log(
        f"vae: {time.time() - t0:.0f}s, reconstruction PSNR {10 * math.log10(1 / mse):.1f} dB, latent scale {scale:.4f}"
    )

    t0 = time.time()
    train_unet(unet, text_encoder, tokenizer, means, stds, captions, scale, args.unet_steps, args.batch, args.seed, log)
    log(f"unet + text encoder: {time.time() - t0:.0f}s")

    from diffusers import PNDMScheduler, StableDiffusionPipeline

    scheduler = PNDMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        num_train_timesteps=1000,
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )
    scheduler.register_to_config(clip_sample=False)  # as SD1.5's own config: DDIM must not clip latents to [-1, 1]
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(stage, safe_serialization=True)
    res = evaluate(
        stage, heldout_prompts(), 1234, ROOT / "docs" / "tiny-sd-fp32-heldout.png", args.eval_steps, args.guidance
    )
    log(
        f"FP32 adherence on {res.n} held-out prompts (DDIM {args.eval_steps} steps, guidance {args.guidance}): {res.to_dict()}"
    )
    size_mb = sum(f.stat().st_size for f in stage.rglob("*") if f.is_file()) / 2**20
    log(f"model size on disk: {size_mb:.1f} MB; total time {time.time() - t_start:.0f}s")
    (stage / "training_log.txt").write_text("\n".join(log_lines) + "\n")
    (stage / "training_summary.json").write_text(
        json.dumps(
            {
                "seed": args.seed,
                "parameters": n_params,
                "size_mb": round(size_mb, 2),
                "train_seconds": round(time.time() - t_start),
                "vae_steps": args.vae_steps,
                "unet_steps": args.unet_steps,
                "adherence_fp32": res.to_dict(),
                "eval": {"scheduler": "ddim", "steps": args.eval_steps, "guidance": args.guidance},
            },
            indent=2,
        )
    )
    if args.out.exists():
        shutil.rmtree(args.out)
    stage.rename(args.out)


if __name__ == "__main__":
    main()
