"""Text-to-image from a build folder with a runtime alone: no torch, no diffusers.

Tokenize (ONNX tokenizer) -> text encoder(s) -> denoising loop with classifier-free guidance
(numpy scheduler, UNet graph) -> VAE decoder -> uint8 image. SD1.x/2.x and SDXL conditioning.

Few-step models run the same loop: an LCM UNet takes its guidance scale as an embedding
(``timestep_cond``) instead of a second batch entry, so it always runs at batch 1; a Turbo model
runs at guidance 0 (batch 1, no negative branch). Stochastic samplers (LCM) draw their per-step
noise from the seed's generator after the initial latents.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import EdgeqError
from edgeq.manifest import read_manifest
from edgeq.runtime import integrity
from edgeq.runtime.schedulers import SCHEDULERS, guidance_embedding, make_scheduler
from edgeq.runtime.sessions import OrtRunner, Runner, component_runner
from edgeq.runtime.tokenizer import OnnxClipTokenizer

RunnerFactory = Callable[[Path, dict[str, Any]], Runner]


def uses_cfg(p: dict[str, Any], guidance: float | None = None) -> bool:
    """Whether the UNet runs a classifier-free-guidance batch of 2: guidance above 1 and not embedded
    (an LCM UNet takes its guidance as ``timestep_cond``; Turbo runs at guidance 0)."""
    g = p["guidance"] if guidance is None else guidance
    return g > 1.0 and not p.get("guidance_embedding_dim")


def default_runner(build: Path, info: dict[str, Any]) -> Runner:
    """ONNX Runtime: one graph, or one graph per timestep group (``info["graphs"]``)."""
    return component_runner(OrtRunner, build, info)


@dataclass
class GenerateOptions:
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    height: int | None = None
    width: int | None = None
    latents: np.ndarray | None = None  # initial noise; default: drawn from ``seed``
    # called with (step index, timestep, UNet feeds) before every UNet call: trajectory capture
    on_unet_input: Callable[[int, float, dict[str, np.ndarray]], None] | None = field(default=None, repr=False)
    # called with (step index, the UNet's output) after every UNet call, before guidance
    on_unet_output: Callable[[int, np.ndarray], None] | None = field(default=None, repr=False)
    on_final_latents: Callable[[np.ndarray], None] | None = field(default=None, repr=False)


class Pipeline:
    """A loaded build. Runners per component come from the manifest's ``runtime`` entry."""

    def __init__(
        self,
        build: Path,
        runners: dict[str, RunnerFactory] | None = None,
        decoder: bool = True,
        low_memory: bool = False,
    ):
        """``decoder=False``: no VAE decoder loaded up front (:meth:`denoise_many` only: the calibration
        capture keeps final latents, and an FP32 decoder's session at 1024 px is gigabytes).

        ``low_memory``: components are loaded when first used and only one stage's are held at a
        time: the text encoders while prompts are encoded, then the UNet while denoising, then the
        VAE decoder. Each :meth:`generate_many` loads each once; memory is the largest stage's, not
        the sum (an SDXL pipeline's 3.1 GB of FP32 text encoders are gone before the UNet loads)."""
        self.build = Path(build)
        self.manifest = read_manifest(self.build)
        integrity.verify(self.build, self.manifest)  # each file hashed once, then trusted while unchanged
        self.p = self.manifest["pipeline"]
        self.family = self.manifest["model"]["family"]
        self.low_memory = low_memory
        factories = {"onnxruntime": default_runner, **(runners or {})}
        self._make: dict[str, Callable[[], Runner]] = {}
        for name, info in self.manifest["components"].items():
            rt = info.get("runtime", "onnxruntime")
            if rt not in factories:
                raise EdgeqError(
                    f"{name} needs the '{rt}' runtime, which this process has not loaded",
                    f"run it through `edgeq run`, which loads the {rt} target",
                )
            # (the build path, not ``self``: a closure over the pipeline would keep it, and every
            # runner it holds, alive after the last reference until the garbage collector runs)
            self._make[name] = lambda f=factories[rt], i=info, b=self.build: f(b, i)
        self.runners: dict[str, Runner] = {}
        if not low_memory:
            for name in self._make:
                if name == "vae_encoder" or (name == "vae_decoder" and not decoder):
                    continue  # text-to-image does not need the encoder; load on demand
                self.runners[name] = self._make[name]()
        self.tokenizers = {
            name: OnnxClipTokenizer(self.build / t["path"], t["max_length"], t["pad_id"], t["eos_id"])
            for name, t in self.manifest["tokenizers"].items()
        }
        self.scheduler_config = json.loads((self.build / self.manifest["scheduler_config"]).read_text())

    def runner(self, name: str) -> Runner:
        """The component's runner, loaded now if it is not."""
        if name not in self.runners:
            if name not in self._make:
                raise EdgeqError(f"this build has no {name}", "rebuild it with that component")
            self.runners[name] = self._make[name]()
        return self.runners[name]

    def _hold_only(self, *names: str) -> None:
        """``low_memory``: drop every loaded component but ``names`` (and give their memory back)."""
        if not self.low_memory:
            return
        drop = [n for n in self.runners if n not in names]
        for n in drop:
            del self.runners[n]
        if drop:
            from edgeq.runtime.sessions import release_memory

            release_memory()

    # -- text ---------------------------------------------------------------------------------
    def encode_text(self, prompts: list[str]) -> dict[str, np.ndarray]:
        """UNet conditioning for ``prompts``: encoder_hidden_states (and SDXL's text_embeds)."""
        if self.family != "sdxl":
            ids = self.tokenizers["tokenizer"](prompts)
            return {"encoder_hidden_states": self.runner("text_encoder").run({"input_ids": ids})["last_hidden_state"]}
        hidden, pooled = [], None
        for enc, tok in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
            out = self.runner(enc).run({"input_ids": self.tokenizers[tok](prompts)})
            layers = sorted((k for k in out if k.startswith("hidden_states.")), key=lambda k: int(k.split(".")[1]))
            hidden.append(out[layers[-2]])  # SDXL conditions on the penultimate layer of both encoders
            pooled = out.get("text_embeds", pooled)
        return {"encoder_hidden_states": np.concatenate(hidden, axis=-1), "text_embeds": pooled}

    # -- generation ---------------------------------------------------------------------------
    def generate(self, o: GenerateOptions) -> np.ndarray:
        """One image, HxWx3 uint8."""
        return self.generate_many([o])[0]

    def generate_many(
        self, opts: list[GenerateOptions], with_unet: Callable[[Runner], None] | None = None
    ) -> list[np.ndarray]:
        """Images for several options, denoised in lockstep: step i of every image before step i + 1 of
        any. Each image is what :meth:`generate` makes of its options alone; a UNet with one graph per
        timestep group that keeps one graph loaded at a time switches graphs once per group, not once
        per image. ``with_unet``: see :meth:`denoise_many`."""
        latents = self.denoise_many(opts, with_unet)
        self._hold_only("vae_decoder")
        return [self.decode(z) for z in latents]

    def denoise_many(
        self, opts: list[GenerateOptions], with_unet: Callable[[Runner], None] | None = None
    ) -> list[np.ndarray]:
        """The final latents of :meth:`generate_many`, not decoded. ``with_unet(runner)``: called once
        with the UNet's runner after the prompts are encoded and before the first denoising call, so
        that other UNet calls (a device check's bundle) share its one load when ``low_memory``."""
        runs = [self._denoise(o) for o in opts]
        self._hold_only(*(n for n in self._make if n.startswith("text_encoder")))
        for r in runs:  # every prompt encoded before the first UNet call
            next(r)
        self._hold_only("unet")
        if with_unet is not None:
            with_unet(self.runner("unet"))
        final: list[np.ndarray | None] = [None] * len(runs)
        active = list(range(len(runs)))
        while active:
            still = []
            for k in active:
                try:
                    next(runs[k])
                    still.append(k)
                except StopIteration as done:
                    final[k] = done.value
            active = still
        return [z for z in final if z is not None]

    def _denoise(self, o: GenerateOptions) -> Generator[None, None, np.ndarray]:
        """The denoising loop of one image as a generator: yields after each UNet call, returns the
        final latents."""
        steps = o.steps or self.p["steps"]
        guidance = self.p["guidance"] if o.guidance is None else o.guidance
        sched_name = o.scheduler or self.p["scheduler"]
        if sched_name not in SCHEDULERS:
            raise EdgeqError(f"unknown scheduler '{sched_name}'", f"choose one of: {', '.join(SCHEDULERS)}")
        if steps < 1:
            raise EdgeqError(f"--steps must be at least 1, got {steps}")
        height = o.height or self.p["resolution"][0]
        width = o.width or self.p["resolution"][1]
        f = self.p["vae_scale_factor"]
        if height % f or width % f:
            raise EdgeqError(f"image size {height}x{width} is not a multiple of {f}", f"use multiples of {f}")
        sched = make_scheduler(sched_name, self.scheduler_config, self.p["prediction_type"])
        sched.set_timesteps(steps)
        embed_dim = self.p.get("guidance_embedding_dim")  # an LCM UNet: guidance is an input, not a batch
        if embed_dim and o.negative_prompt:
            raise EdgeqError(
                "this is a latent consistency model: its guidance is embedded in the UNet, which has no "
                "negative branch, so a negative prompt would be ignored",
                "leave out the negative prompt (steer with --guidance)",
            )
        cfg = uses_cfg(self.p, guidance)
        self._check_static(height, width, 2 if cfg else 1)
        if cfg:  # one text-encoder call for [negative, prompt], the UNet's classifier-free-guidance batch
            cond = self.encode_text([o.negative_prompt, o.prompt])
            if self.family == "sdxl" and not o.negative_prompt and self.p.get("force_zeros_for_empty_prompt"):
                for v in cond.values():
                    v[0] = 0.0
        else:
            cond = self.encode_text([o.prompt])
        if self.family == "sdxl":
            ids = np.array([[height, width, 0, 0, height, width]], np.float32)
            cond["time_ids"] = np.repeat(ids, 2 if cfg else 1, axis=0)
        shape = (1, self.p["latent_channels"], height // f, width // f)
        if embed_dim:
            cond["timestep_cond"] = guidance_embedding(max(guidance - 1.0, 0.0), int(embed_dim))
        rng = np.random.default_rng(o.seed)
        if o.latents is not None:
            if tuple(o.latents.shape) != shape:
                raise EdgeqError(f"latents have shape {o.latents.shape}, expected {shape}")
            latents = o.latents.astype(np.float32)
        else:
            latents = rng.standard_normal(shape, dtype=np.float32)
        latents = latents * np.float32(sched.init_noise_sigma)
        yield  # the text is encoded (low memory: the text encoders are dropped before the UNet loads)
        last = len(sched.timesteps) - 1
        for i, t in enumerate(sched.timesteps):
            x = sched.scale_model_input(latents, i)
            feeds = {"sample": np.concatenate([x, x]) if cfg else x, "timestep": np.array(t, np.float32), **cond}
            if o.on_unet_input is not None:
                o.on_unet_input(i, float(t), feeds)
            eps = self.runner("unet").run(feeds)["out_sample"]
            if o.on_unet_output is not None:
                o.on_unet_output(i, eps)
            if cfg:
                e_u, e_c = eps[:1], eps[1:]
                eps = e_u + np.float32(guidance) * (e_c - e_u)
            noise = rng.standard_normal(shape, dtype=np.float32) if sched.needs_noise and i < last else None
            latents = sched.step(eps, i, latents, noise=noise)
            yield
        if o.on_final_latents is not None:
            o.on_final_latents(latents)
        return latents

    def vae_input(self, latents: np.ndarray) -> np.ndarray:
        """The VAE decoder's input for final latents (unscaled, shifted)."""
        z = latents / np.float32(self.p["scaling_factor"])
        if self.p.get("shift_factor"):
            z = z + np.float32(self.p["shift_factor"])
        return z.astype(np.float32)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        img = self.runner("vae_decoder").run({"latent_sample": self.vae_input(latents)})["sample"][0]
        img = np.clip(img / 2 + 0.5, 0.0, 1.0).transpose(1, 2, 0)
        return (img * 255).round().astype(np.uint8)

    def _check_static(self, height: int, width: int, batch: int) -> None:
        """Refuse, before running, what a static-shape build cannot take."""
        shapes = self.manifest.get("shapes", {})
        if not shapes.get("static"):
            return
        want = tuple(self.p["resolution"])
        if (height, width) != want:
            raise EdgeqError(
                f"this build has static shapes for {want[0]}x{want[1]} images, asked for {height}x{width}",
                "use the build's size, or export without --static",
            )
        if batch != shapes["axes"]["batch"]:
            raise EdgeqError(
                f"this build's UNet has a static batch of {shapes['axes']['batch']}, this run needs {batch} "
                "(2 with classifier-free guidance, 1 with --guidance 1)",
                "change --guidance, or export with a matching --batch",
            )


def save_png(img: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(img).save(tmp, format="PNG")
    tmp.replace(path)
