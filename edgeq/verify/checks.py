"""Accuracy checks of a quantized build against FP32, and the gates that decide pass or fail."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass

import numpy as np

from edgeq.calibrate.capture import Capture
from edgeq.progress import progress
from edgeq.runtime.groups import group_for
from edgeq.runtime.sessions import Runner
from edgeq.verify.metrics import cosine, psnr_db, sqnr_db, ssim


@dataclass(frozen=True)
class Gate:
    component: str
    metric: str
    group: int | None
    value: float
    threshold: float
    higher_is_better: bool = True

    @property
    def passed(self) -> bool:
        if not np.isfinite(self.value) and self.value > 0:
            return self.higher_is_better
        return bool(self.value >= self.threshold if self.higher_is_better else self.value <= self.threshold)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def describe(self) -> str:
        where = f" group {self.group}" if self.group is not None else ""
        op = ">=" if self.higher_is_better else "<="
        return f"{self.component}{where} {self.metric} = {self.value:.4g} (needs {op} {self.threshold:g})"


def unet_groups(
    fp32: Runner,
    quant: Runner,
    capture: Capture,
    groups: list[dict],
    desc: str = "check unet",
    keep: Collection[tuple[int, int]] = (),
    kept: dict[tuple[int, int], np.ndarray] | None = None,
) -> list[dict]:
    """Noise-prediction SQNR and cosine per timestep group on held-out captured UNet inputs. The
    quantized outputs of the (prompt, step) calls in ``keep`` go into ``kept``."""
    from edgeq.runtime.sessions import OneGroupRunner

    acc = [{"sig": 0.0, "err": 0.0, "dot": 0.0, "qq": 0.0, "n": 0} for _ in groups]
    if isinstance(quant, OneGroupRunner) and len(groups) > 1:  # group-major: one graph load per group
        samples = (s for g in range(len(groups)) for s in capture.unet_samples() if group_for(groups, s.timestep) == g)
    else:
        samples = capture.unet_samples()
    for s in progress(samples, total=len(capture), desc=desc, unit="call", knob="--num-heldout"):
        ref = (s.reference if s.reference is not None else fp32.run(s.feeds)["out_sample"]).astype(np.float64)
        out = quant.run(s.feeds)["out_sample"]
        if kept is not None and (s.prompt_index, s.step) in keep:
            kept[(s.prompt_index, s.step)] = np.array(out, np.float32)
        q = out.astype(np.float64)
        a = acc[group_for(groups, s.timestep)]
        a["sig"] += float((ref**2).sum())
        a["err"] += float(((ref - q) ** 2).sum())
        a["dot"] += float((ref * q).sum())
        a["qq"] += float((q**2).sum())
        a["n"] += 1
    out = []
    for g, a in zip(groups, acc):
        sq = float("inf") if a["err"] == 0 else 10 * np.log10(a["sig"] / a["err"])
        cos = a["dot"] / max(np.sqrt(a["sig"] * a["qq"]), 1e-30)
        out.append(
            {
                "index": g["index"],
                "t_min": g["t_min"],
                "t_max": g["t_max"],
                "sqnr_db": float(sq),
                "cosine": float(cos),
                "samples": a["n"],
            }
        )
    return out


def to_image(x: np.ndarray) -> np.ndarray:
    return (np.clip(x[0] / 2 + 0.5, 0, 1).transpose(1, 2, 0) * 255).round().astype(np.uint8)


def vae_psnr(fp32: Runner, quant: Runner, capture: Capture) -> float:
    """PSNR of the VAE decoder's images on held-out final latents (uint8 images, like the pipeline)."""
    vals = []
    for z in capture.vae_inputs():
        a = to_image(fp32.run({"latent_sample": z})["sample"])
        b = to_image(quant.run({"latent_sample": z})["sample"])
        vals.append(min(psnr_db(a, b), 100.0))  # identical images count as 100 dB, not inf
    return float(np.mean(vals))


__all__ = ["Gate", "unet_groups", "vae_psnr", "sqnr_db", "cosine", "psnr_db", "ssim"]
