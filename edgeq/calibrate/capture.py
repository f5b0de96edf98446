"""Trajectory capture: run the FP32 pipeline and record what each component sees.

One shard per prompt (``shard-00000.npz``): the UNet inputs and outputs at every step keyed by
(prompt, step, timestep), the text encoder's input ids and the VAE decoder's input. The outputs and
final latents are the FP32 reference the checks compare against, so a build runs the FP32 UNet over
held-out prompts once, not once per check. Seeds are ``seed + index``, so
a capture is deterministic; shards are written atomically and an interrupted capture resumes where
it stopped. ``capture.json`` records the settings; a capture with other settings is not reused.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from edgeq.errors import EdgeqError
from edgeq.fsutil import write_json
from edgeq.progress import progress

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
    reference: np.ndarray | None = None  # the FP32 UNet's output for ``feeds``, when captured


@dataclass(frozen=True)
class Capture:
    """The stage-border object: a folder of shards and the settings that made them."""

    folder: Path
    settings: CaptureSettings
    timesteps: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"folder": str(self.folder), "settings": asdict(self.settings), "timesteps": list(self.timesteps)}

    @classmethod
    def from_dict(cls, d: dict) -> Capture:
        s = d["settings"]
        settings = CaptureSettings(**{**s, "prompts": tuple(s["prompts"])})
        return cls(Path(d["folder"]), settings, tuple(float(t) for t in d["timesteps"]))

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

    def calls(self, limit: int | None = None) -> list[tuple[int, int]]:
        """(prompt, step) of the UNet calls to use: all of them, or ``limit`` spread evenly.

        A subset visits every step before it visits any step twice, rotating through the prompts, so
        each timestep keeps its share of the statistics whatever the budget.
        """
        p, s = len(self.settings.prompts), len(self.timesteps)
        order = [((step + k) % p, step) for k in range(p) for step in range(s)]
        return sorted(order if limit is None else order[:limit])

    def unet_samples(self, limit: int | None = None) -> Iterator[Sample]:
        """The captured UNet calls (see :meth:`calls`), one at a time (one shard in memory)."""
        chosen: dict[int, set[int]] = {}
        for i, step in self.calls(limit):
            chosen.setdefault(i, set()).add(step)
        for i in sorted(chosen):
            yield from self.shard_samples(i, chosen[i])

    def shard_samples(self, i: int, steps=None) -> Iterator[Sample]:
        """The UNet calls of prompt shard ``i`` at ``steps`` (None: all), in step order."""
        d = self.load(i)
        skip = ("unet.sample", "unet.out_sample")
        static = {k[len("unet.") :]: v for k, v in d.items() if k.startswith("unet.") and k not in skip}
        ref = d.get("unet.out_sample")
        for s, t in enumerate(d["timesteps"]):
            if steps is None or s in steps:
                feeds = {"sample": d["unet.sample"][s], "timestep": np.array(t, np.float32), **static}
                yield Sample(i, s, float(t), feeds, None if ref is None else ref[s])

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


def capture(
    build: Path,
    folder: Path,
    settings: CaptureSettings,
    desc: str = "capture",
    cluster=None,
    on_first=None,
    stats=None,
) -> Capture:
    """Capture trajectories of the FP32 build at ``build`` into ``folder`` (resuming if possible);
    ``cluster`` (:class:`edgeq.stages.cluster.RayCluster`): one task per missing shard there.
    ``on_first(seconds)``: called once, right after the first FP32 UNet call captured here, with that
    call's time (so a long build's estimate comes seconds into it, not after a whole prompt).
    ``stats`` (:class:`edgeq.calibrate.collect.StatsRequest`): the UNet runs as that augmented graph
    (:class:`edgeq.calibrate.collect.CaptureStats`, here and on the cluster alike) and, where every
    prompt is captured in this call, the statistics of its chosen calls are collected on the way into
    ``stats.result``."""
    from edgeq.calibrate.collect import CaptureStats, merge_partials

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
    write_json(index_path, {"settings": want, "complete": False})
    todo = [i for i in range(len(settings.prompts)) if not (folder / f"shard-{i:05d}.npz").is_file()]
    if stats is not None and len(todo) < len(settings.prompts):
        stats = replace(stats, chosen=set())  # a resumed capture: its statistics are collected after it
    partials: list = []
    if todo and cluster is not None:
        partials = cluster.capture(build, folder, settings, todo, desc, stats)
        todo = []
        for f in folder.glob(".shard-*.npz"):  # half-written by a worker that died (its task was retried)
            f.unlink(missing_ok=True)
    pipe = capture_pipeline(build, settings, stats) if todo else None  # gigabytes: loaded only to capture
    unet = pipe.runner("unet") if pipe is not None else None
    knob = "--num-calib" if "calib" in desc else "--num-heldout"
    for k, i in enumerate(progress(todo, desc=desc, unit="prompt", knob=knob, disable=not todo)):
        assert pipe is not None
        if isinstance(unet, CaptureStats):
            unet.begin(i)
        capture_shard(pipe, settings, i, folder, on_first_call=on_first if k == 0 else None)
    if isinstance(unet, CaptureStats):
        partials.append(unet.partial())
    if pipe is not None:  # the FP32 pipeline's sessions (14 GB at SDXL size): gone before the next stage
        from edgeq.runtime.sessions import release_memory

        # every name for them: the UNet runner kept as ``unet`` held 4.3 GB of an SDXL capture at
        # 1024 px in the build process through the statistics child that followed (2026-12-04)
        del pipe, unet
        release_memory()
    first = Capture(folder, settings, ()).load(0)
    timesteps = [float(t) for t in first["timesteps"]]
    write_json(index_path, {"settings": want, "complete": True, "timesteps": timesteps})
    if stats is not None and partials:
        merge_partials(stats, partials, timesteps)
    return Capture(folder, settings, tuple(timesteps))


def capture_pipeline(build: Path, settings: CaptureSettings, stats=None):
    """The FP32 pipeline a capture runs: its UNet the statistics' augmented graph (a
    :class:`edgeq.calibrate.collect.CaptureStats`) where ``stats`` asks for it."""
    from edgeq.calibrate.collect import CaptureStats
    from edgeq.runtime.pipeline import Pipeline, default_runner

    if stats is None:
        return Pipeline(build, decoder=False)

    def runner(b: Path, info: dict):
        if not str(info.get("path", "")).startswith("unet/"):
            return default_runner(b, info)
        return CaptureStats(stats, len(_timesteps(b, settings)))

    return Pipeline(build, runners={"onnxruntime": runner}, decoder=False)


def _timesteps(build: Path, settings: CaptureSettings) -> list[float]:
    """The denoising timesteps the capture's scheduler runs at its step count."""
    from edgeq.manifest import read_manifest
    from edgeq.runtime.schedulers import make_scheduler

    manifest = read_manifest(build)
    config = json.loads((build / manifest["scheduler_config"]).read_text())
    sched = make_scheduler(settings.scheduler, config, manifest["pipeline"]["prediction_type"])
    sched.set_timesteps(settings.steps)
    return [float(t) for t in sched.timesteps]


def capture_shard(pipe, settings: CaptureSettings, i: int, folder: Path, on_first_call=None) -> None:
    """Prompt ``i``'s trajectory through the FP32 pipeline, written atomically as its shard file.
    ``on_first_call(seconds)``: called after its first UNet call, with that call's time."""
    from edgeq.runtime.pipeline import GenerateOptions

    rec: dict[str, list] = {"sample": [], "timesteps": [], "out_sample": []}
    static: dict[str, np.ndarray] = {}
    started: list[float] = []

    def on_unet(step: int, t: float, feeds: dict[str, np.ndarray]) -> None:
        if step == 0:
            started.append(time.perf_counter())
        rec["sample"].append(feeds["sample"].copy())
        rec["timesteps"].append(t)
        for k, v in feeds.items():
            if k not in ("sample", "timestep") and k not in static:
                static[k] = v.copy()

    def on_out(step: int, out: np.ndarray) -> None:
        rec["out_sample"].append(out.copy())
        if step == 0 and on_first_call is not None:
            on_first_call(time.perf_counter() - started[0])

    final = pipe.denoise_many(
        [
            GenerateOptions(
                prompt=settings.prompts[i],
                negative_prompt=settings.negative_prompt,
                seed=settings.seed + i,
                steps=settings.steps,
                guidance=settings.guidance,
                scheduler=settings.scheduler,
                on_unet_input=on_unet,
                on_unet_output=on_out,
            )
        ]
    )
    arrays = {
        "unet.sample": np.stack(rec["sample"]),
        "unet.out_sample": np.stack(rec["out_sample"]),
        "timesteps": np.array(rec["timesteps"], np.float32),
        "vae_decoder.latent_sample": pipe.vae_input(final[0]),
        "text_encoder.input_ids": pipe.tokenizers["tokenizer"]([settings.negative_prompt, settings.prompts[i]]),
    }
    arrays |= {f"unet.{k}": v for k, v in static.items()}
    fd, tmp = tempfile.mkstemp(prefix=".shard-", suffix=".npz", dir=folder)
    with os.fdopen(fd, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, folder / f"shard-{i:05d}.npz")
