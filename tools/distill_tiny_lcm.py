#!/usr/bin/env python
"""Distil tiny-sd into tiny-lcm, edgeq's few-step yardstick, by latent consistency distillation.

The recipe is LCM's (Luo et al. 2023; diffusers' ``train_lcm_distill_sd_wds.py``), at tiny-sd's
size and on this machine's CPU budget:

- the student is tiny-sd's UNet with a guidance embedding added (``time_cond_proj_dim``; the new
  projection starts at zero, so the student starts as the teacher);
- the teacher is frozen tiny-sd with classifier-free guidance, its unconditional branch the empty
  prompt (tiny-sd was trained with caption dropout to "");
- one DDIM step of the teacher on a 50-step skipping schedule (k = 20) gives the target point;
  the target network is an EMA of the student (decay 0.95); boundary conditions c_skip / c_out with
  sigma_data 0.5 and timestep scaling 10 (diffusers' ``LCMScheduler``); pseudo-Huber loss;
- the guidance scale w (LCM's convention: pipeline guidance = w + 1) is drawn per sample from
  [--w-min, --w-max] and fed through the guidance embedding, so one model serves a range.

Text encoder, VAE and tokenizer are tiny-sd's, unchanged. The result is a complete diffusers
``LatentConsistencyModelPipeline`` folder with an ``LCMScheduler`` config:

    python tools/distill_tiny_lcm.py --out edgeq/models/tiny_lcm/weights

It ends with FP32 adherence on the held-out prompts at 1, 2 and 4 steps, beside the teacher's
(DDIM 20 steps), written to ``training_summary.json`` and a sample grid per step count in docs/.
Deterministic from --seed.
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
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_tiny_sd import (  # noqa: E402
    IMAGE_SIZE,
    encode_all,
    heldout_prompts,
    make_dataset,
    split_scenes,
    tokenize,
)

from edgeq.verify.adherence import adherence  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "edgeq" / "models" / "tiny_sd" / "weights"
NUM_DDIM = 50  # LCM's skipping schedule: 50 points, k = 1000 / 50
COND_DIM = 256  # guidance-embedding width, LCM's for SD1.5


def guidance_embedding(w: torch.Tensor, dim: int = COND_DIM) -> torch.Tensor:
    """diffusers' ``LatentConsistencyModelPipeline.get_guidance_scale_embedding``."""
    w = w * 1000.0
    half = dim // 2
    emb = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    emb = w.float()[:, None] * emb[None, :]
    return torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)


def boundary(t: torch.Tensor, sigma_data: float = 0.5, scaling: float = 10.0):
    s = t.float() * scaling
    c_skip = sigma_data**2 / (s**2 + sigma_data**2)
    c_out = s / (s**2 + sigma_data**2) ** 0.5
    return c_skip.view(-1, 1, 1, 1), c_out.view(-1, 1, 1, 1)


def distil(args, log) -> tuple:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(TEACHER / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(TEACHER / "text_encoder").eval()
    vae = AutoencoderKL.from_pretrained(TEACHER / "vae").eval()
    teacher = UNet2DConditionModel.from_pretrained(TEACHER / "unet").eval()
    config = dict(teacher.config)
    config["time_cond_proj_dim"] = COND_DIM
    student = UNet2DConditionModel.from_config(config)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all("cond_proj" in k for k in missing), (missing, unexpected)
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)  # starts as the teacher
    target = UNet2DConditionModel.from_config(config)
    target.load_state_dict(student.state_dict())
    target.eval()
    for m in (teacher, target, text_encoder, vae):
        m.requires_grad_(False)

    train_scenes, _ = split_scenes(args.seed)
    data, captions = make_dataset(train_scenes, args.num_images, args.seed)
    with torch.no_grad():
        means, stds = encode_all(vae, data)
        scale = vae.config.scaling_factor
        uniq = sorted(set(captions))
        emb_of = {}
        for i in range(0, len(uniq), 256):
            chunk = uniq[i : i + 256]
            for c, e in zip(chunk, text_encoder(tokenize(tokenizer, chunk))[0]):
                emb_of[c] = e
        cond_all = torch.stack([emb_of[c] for c in captions])
        uncond = text_encoder(tokenize(tokenizer, [""]))[0]
    log(f"data: {len(data)} latents of {len(uniq)} captions")

    ac = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    ac = torch.cumprod(1.0 - ac, 0)
    k = 1000 // NUM_DDIM
    ddim_t = torch.arange(1, NUM_DDIM + 1) * k - 1  # 19, 39, ..., 999
    ddim_prev_ac = torch.cat([ac[:1], ac[ddim_t[:-1]]])

    def x0_eps(x, eps, t):
        a = ac[t].view(-1, 1, 1, 1)
        return (x - (1 - a).sqrt() * eps) / a.sqrt()

    g = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0)
    warm = 100
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))
    )
    student.train()
    t_end = time.time() + args.minutes * 60
    bar = tqdm(range(args.steps), desc="lcm distillation")
    done = 0
    for step in bar:
        b = args.batch
        idx = torch.randint(0, len(means), (b,), generator=g)
        z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=g)) * scale
        cond = cond_all[idx]
        i = torch.randint(0, NUM_DDIM, (b,), generator=g)
        t_start = ddim_t[i]
        t_next = (t_start - k).clamp(min=0)
        noise = torch.randn(z0.shape, generator=g)
        a = ac[t_start].view(-1, 1, 1, 1)
        x_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
        w = args.w_min + (args.w_max - args.w_min) * torch.rand(b, generator=g)
        w_emb = guidance_embedding(w)
        wv = w.view(-1, 1, 1, 1)

        with torch.no_grad():
            both = teacher(
                torch.cat([x_t, x_t]), torch.cat([t_start, t_start]), torch.cat([cond, uncond.expand(b, -1, -1)])
            ).sample
            e_c, e_u = both.chunk(2)
            x0_c, x0_u = x0_eps(x_t, e_c, t_start), x0_eps(x_t, e_u, t_start)
            x0_g = x0_c + wv * (x0_c - x0_u)
            e_g = e_c + wv * (e_c - e_u)
            a_prev = ddim_prev_ac[i].view(-1, 1, 1, 1)
            x_prev = a_prev.sqrt() * x0_g + (1 - a_prev).sqrt() * e_g
            e_tgt = target(x_prev, t_next, cond, timestep_cond=w_emb).sample
            cs, co = boundary(t_next)
            tgt = cs * x_prev + co * x0_eps(x_prev, e_tgt, t_next)

        e_s = student(x_t, t_start, cond, timestep_cond=w_emb).sample
        cs0, co0 = boundary(t_start)
        pred = cs0 * x_t + co0 * x0_eps(x_t, e_s, t_start)
        c = args.huber_c
        loss = (torch.sqrt((pred - tgt) ** 2 + c**2) - c).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for pt, ps in zip(target.parameters(), student.parameters()):
                pt.mul_(args.ema).add_(ps.detach(), alpha=1 - args.ema)
        bar.set_postfix(loss=f"{loss.item():.5f}")
        done = step + 1
        if step % 250 == 0:
            log(f"step {step} loss {loss.item():.5f}")
        if time.time() > t_end:
            log(f"time budget of {args.minutes} min reached at step {done}")
            break
    target.eval()
    return target, text_encoder, vae, tokenizer, done


def save_pipeline(out: Path, unet, text_encoder, vae, tokenizer) -> None:
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    scheduler = LCMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        num_train_timesteps=1000,
        original_inference_steps=NUM_DDIM,
        set_alpha_to_one=True,
        steps_offset=1,
        clip_sample=False,
        timestep_scaling=10.0,
    )
    pipe = LatentConsistencyModelPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)


def evaluate(folder: Path, steps: int, guidance: float, seed: int, grid: Path | None) -> dict:
    from diffusers import LatentConsistencyModelPipeline
    from PIL import Image

    pipe = LatentConsistencyModelPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    prompts = heldout_prompts()
    images = []
    for i in range(0, len(prompts), 16):
        out = pipe(
            prompts[i : i + 16],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator().manual_seed(seed + i),
            height=IMAGE_SIZE,
            width=IMAGE_SIZE,
            output_type="np",
        ).images
        images += [np.clip(np.round(im * 255), 0, 255).astype(np.uint8) for im in out]
    if grid is not None:
        cols, n = 8, 32
        g = np.zeros((n // cols * IMAGE_SIZE, cols * IMAGE_SIZE, 3), np.uint8)
        for j in range(n):
            r, c = divmod(j, cols)
            g[r * IMAGE_SIZE : (r + 1) * IMAGE_SIZE, c * IMAGE_SIZE : (c + 1) * IMAGE_SIZE] = images[j]
        grid.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(g).resize((g.shape[1] * 2, g.shape[0] * 2), Image.NEAREST).save(grid, optimize=True)
    return adherence(prompts, images).to_dict()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "edgeq" / "models" / "tiny_lcm" / "weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-images", type=int, default=12000)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--minutes", type=float, default=40.0, help="stop early when this much time has passed")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--ema", type=float, default=0.95)
    ap.add_argument("--huber-c", type=float, default=0.001)
    ap.add_argument("--w-min", type=float, default=2.0)
    ap.add_argument("--w-max", type=float, default=8.0)
    ap.add_argument("--guidance", type=float, default=5.0, help="pipeline guidance for the evaluation (w + 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-only", action="store_true", help="re-score the model in --out; no training")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    t0 = time.time()
    lines: list[str] = []

    def log(msg: str) -> None:
        line = f"[{time.time() - t0:7.1f}s] {msg}"
        lines.append(line)
        tqdm.write(line)

    folder = args.out
    if not args.eval_only:
        torch.use_deterministic_algorithms(True)
        stage = args.out.parent / (args.out.name + ".partial")
        shutil.rmtree(stage, ignore_errors=True)
        unet, text_encoder, vae, tokenizer, done = distil(args, log)
        log(f"distillation: {done} steps of batch {args.batch} in {time.time() - t0:.0f}s")
        save_pipeline(stage, unet, text_encoder, vae, tokenizer)
        folder = stage
    results = {}
    for n in (1, 2, 4):
        results[str(n)] = evaluate(folder, n, args.guidance, 1234, ROOT / "docs" / f"tiny-lcm-fp32-{n}step.png")
        log(f"FP32 adherence, {n} step(s), guidance {args.guidance}: {results[str(n)]}")
    teacher = json.loads((TEACHER / "training_summary.json").read_text())
    summary_path = folder / "training_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary.update(
        {
            "teacher": "tiny-sd",
            "recipe": "latent consistency distillation (LCM), guidance embedded, DDIM solver k=20, EMA target 0.95",
            "adherence_fp32": results,
            "teacher_adherence_fp32": {"steps": 20, "scheduler": "ddim", **teacher["adherence_fp32"]},
            "eval": {"scheduler": "lcm", "guidance": args.guidance, "seed": 1234, "prompts": "heldout.txt"},
        }
    )
    if not args.eval_only:
        summary.update(
            {
                "seed": args.seed,
                "steps": done,
                "batch": args.batch,
                "lr": args.lr,
                "w_range": [args.w_min, args.w_max],
                "train_seconds": round(time.time() - t0),
            }
        )
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    if not args.eval_only:
        (folder / "training_log.txt").write_text("\n".join(lines) + "\n")
        if args.out.exists():
            shutil.rmtree(args.out)
        folder.rename(args.out)


if __name__ == "__main__":
    main()
