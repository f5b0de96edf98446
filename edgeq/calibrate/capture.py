"""Trajectory capture: run the FP32 pipeline and record what each component sees.

One shard per prompt (``shard-00000.npz``): the UNet inputs at every step keyed by (prompt, step,
timestep), the text encoder's input ids and the VAE decoder's input. Seeds are ``seed + index``, so
a capture is deterministic; shards are written atomically and an interrupted capture resumes where
it stopped. ``capture.json`` records the settings; a capture with other settings is not reused.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edgeq.errors import EdgeqError
from edgeq.fsutil import write_json

INDEX = "capture.json"


@dataclass(frozen=True)
class CaptureSettings:
    prompts: tuple[str, ...]
    seed: int
    steps: int
    guidance: float
    scheduler: str
    negative_prompt: str = ""
    source: str = ""  # the FP32 export's cache key: shards of another export are never reused


@dataclass(frozen=True)
class Sample:
    """One UNet call of a captured trajectory."""

    prompt_index: int
    step: int
    timestep: float
    feeds: dict[str, np.ndarray]


@dataclass(frozen=True)
class Capture:
    """The stage-border object: a folder of shards and the settings that made them."""

    folder: Path
    settings: CaptureSettings
    timesteps: tuple[float, ...]

    def shard(self, i: int) -> Path:
        return self.folder / f"shard-{i:05d}.npz"

    def load(self, i: int) -> dict[str, np.ndarray]:
        path = self.shard(i)
        try:
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise EdgeqError(
                f"calibration shard {path} is damaged ({type(e).__name__}: {e})",
                "delete it and run the command again to capture it anew",
            ) from None

    def unet_samples(self) -> Iterator[Sample]:
        """Every captured UNet call, one at a time (one shard in memory)."""
        for i in range(len(self.settings.prompts)):
            d = self.load(i)
            static = {k[len("unet.") :]: v for k, v in d.items() if k.startswith("unet.") and k != "unet.sample"}
            for s, t in enumerate(d["timesteps"]):
                feeds = {"sample": d["unet.sample"][s], "timestep": np.array(t, np.float32), **static}
                yield Sample(i, s, float(t), feeds)

    def vae_inputs(self) -> Iterator[np.ndarray]:
        for i in range(len(self.settings.prompts)):
            yield self.load(i)["vae_decoder.latent_sample"]

    def __len__(self) -> int:
        return len(self.settings.prompts) * len(self.timesteps)


def read_prompts(path: Path) -> list[str]:
    if not path.is_file():
        raise EdgeqError(f"prompt file {path} does not exist", "give a text file with one prompt per line")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise EdgeqError(f"prompt file {path} has no prompts", "write one prompt per line")
    return prompts


def capture(build: Path, folder: Path, settings: CaptureSettings, desc: str = "capture") -> Capture:
    """Capture trajectories of the FP32 build at ``build`` into ``folder`` (resuming if possible)."""
    from edgeq.runtime.pipeline import GenerateOptions, Pipeline

    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / INDEX
    want = asdict(settings) | {"prompts": list(settings.prompts)}
    try:
        old = json.loads(index_path.read_text()) if index_path.is_file() else {}
    except json.JSONDecodeError:
        old = {}
    if old.get("settings") != want:  # other settings, or shards of unknown origin: start afresh
        for f in folder.glob("shard-*.npz"):
            f.unlink()
    pipe = Pipeline(build)
    write_json(index_path, {"settings": want, "complete": False})
    timesteps: list[float] = []
    todo = [i for i in range(len(settings.prompts)) if not (folder / f"shard-{i:05d}.npz").is_file()]
    for i in tqdm(todo, desc=desc, unit="prompt", disable=not todo):
        rec: dict[str, list] = {"sample": [], "timesteps": []}
        static: dict[str, np.ndarray] = {}

        def on_unet(step: int, t: float, feeds: dict[str, np.ndarray], rec=rec, static=static) -> None:
            rec["sample"].append(feeds["sample"].copy())
            rec["timesteps"].append(t)
            for k, v in feeds.items():
                if k not in ("sample", "timestep") and k not in static:
                    static[k] = v.copy()

        final: list[np.ndarray] = []
        pipe.generate(
            GenerateOptions(
                prompt=settings.prompts[i],
                negative_prompt=settings.negative_prompt,
                seed=settings.seed + i,
                steps=settings.steps,
                guidance=settings.guidance,
                scheduler=settings.scheduler,
                on_unet_input=on_unet,
                on_final_latents=final.append,
            )
        )
        arrays = {
            "unet.sample": np.stack(rec["sample"]),
            "timesteps": np.array(rec["timesteps"], np.float32),
            "vae_decoder.latent_sample": pipe.vae_input(final[0]),
            "text_encoder.input_ids": pipe.tokenizers["tokenizer"]([settings.negative_prompt, settings.prompts[i]]),
        }
        arrays |= {f"unet.{k}": v for k, v in static.items()}
        fd, tmp = tempfile.mkstemp(prefix=".shard-", suffix=".npz", dir=folder)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, folder / f"shard-{i:05d}.npz")
    first = Capture(folder, settings, ()).load(0)
    timesteps = [float(t) for t in first["timesteps"]]
    write_json(index_path, {"settings": want, "complete": True, "timesteps": timesteps})
    return Capture(folder, settings, tuple(timesteps))
