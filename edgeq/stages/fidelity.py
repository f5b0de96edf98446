"""Kernel fidelity and the verification bundle a build carries to its device.

Hand-written: no runtime compares its own int8 kernels with the exact arithmetic of the Q/DQ graph
they run. The bundle (see :mod:`edgeq.verify.device`) holds a few held-out UNet calls per timestep
group with their FP32 outputs and the exact Q/DQ outputs of the deployed variant (ONNX Runtime,
graph optimisation off), and a few FP32 reference images. The build then runs the device check on
itself (the host's family) and, where this machine can compute as another family (OpenVINO with
oneDNN capped below VNNI), in a child process as that family too. Results go to the manifest's
``kernel_fidelity``; :mod:`edgeq.stages.checks` turns them into gates and report sections.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.calibrate.capture import Capture
from edgeq.fsutil import write_json
from edgeq.manifest import artifact_table, read_manifest, write_manifest
from edgeq.runtime import cpu as cpu_mod
from edgeq.runtime.groups import group_for
from edgeq.stages.config import HELDOUT_SEED
from edgeq.stages.context import Context
from edgeq.stages.qdq import QuantizedUnet
from edgeq.verify.device import BUNDLE, BUNDLE_DIR, BUNDLE_FORMAT, CALLS, IMAGES, DeviceCheck, device_check


def exact_runner(unet: QuantizedUnet, mode: str):
    """The deployed variant's Q/DQ graphs as exact arithmetic (ONNX Runtime, no graph optimisation)."""
    from edgeq.runtime.sessions import OrtRunner, grouped

    return unet.runner(mode, lambda graphs: grouped(lambda p: OrtRunner(p, optimize=False), graphs))


def pick_calls(held: Capture, groups: list[dict], per_group: int) -> list[tuple[int, int]]:
    """(prompt, step) of ``per_group`` held-out calls per timestep group, spread over its steps and prompts."""
    by_group: dict[int, list[tuple[int, int]]] = {}
    for i, s in held.calls():
        by_group.setdefault(group_for(groups, held.timesteps[s]), []).append((i, s))
    chosen = []
    for g in sorted(by_group):
        # rotate prompts as the steps advance, so the chosen calls differ in prompt and in step
        calls = sorted(by_group[g], key=lambda c: ((c[0] - c[1]) % len(held.settings.prompts), c[1]))
        idx = np.unique(np.linspace(0, len(calls) - 1, min(per_group, len(calls))).round().astype(int))
        chosen += [calls[k] for k in idx]
    return sorted(chosen)


def write_bundle(ctx: Context, unet: QuantizedUnet | None, mode: str, held: Capture, stage: Path) -> list[Path]:
    """``verify/``: UNet calls with FP32 and exact outputs, FP32 and host INT8 images; returns its files."""
    from tqdm import tqdm

    from edgeq.runtime.sessions import LazyRunner, OrtRunner, one_group_at_a_time
    from edgeq.verify.checks import to_image

    g = ctx.profile.gates
    folder = stage / BUNDLE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    calls_meta: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    if unet is not None and mode != "float":
        groups = unet.group_dicts
        wanted = set(pick_calls(held, groups, g.verify_calls_per_group))
        with one_group_at_a_time():
            exact = exact_runner(unet, mode)
        fp32 = LazyRunner(ctx.export.path("unet"))
        samples = [s for s in held.unet_samples() if (s.prompt_index, s.step) in wanted]
        samples.sort(key=lambda s: group_for(groups, s.timestep))  # group-major: one graph load per group
        for k, s in enumerate(tqdm(samples, desc="verification bundle (exact Q/DQ)", unit="call")):
            ref = s.reference if s.reference is not None else fp32.run(s.feeds)["out_sample"]
            for name, v in s.feeds.items():
                arrays[f"c{k}.in.{name}"] = np.asarray(v)
            arrays[f"c{k}.fp32"] = np.asarray(ref, np.float32)
            arrays[f"c{k}.exact"] = exact.run(s.feeds)["out_sample"].astype(np.float32)
            calls_meta.append(
                {
                    "group": group_for(groups, s.timestep),
                    "timestep": s.timestep,
                    "prompt": s.prompt_index,
                    "step": s.step,
                    "inputs": sorted(s.feeds),
                }
            )
        del exact, fp32
    np.savez(folder / "unet_calls.npz", **arrays)
    prompts = list(held.settings.prompts)[: g.verify_images]
    vae = OrtRunner(ctx.export.path("vae_decoder"))
    latents = list(held.vae_inputs())
    images = {f"fp32_{i}": to_image(vae.run({"latent_sample": latents[i]})["sample"]) for i in range(len(prompts))}
    np.savez(folder / "images.npz", **images)
    bundle = {
        "format": BUNDLE_FORMAT,
        "variant": mode,
        "calls": calls_meta,
        "images": [{"prompt": p, "seed": HELDOUT_SEED + i} for i, p in enumerate(prompts)],
        "gates": {
            "unet_sqnr_db": g.unet_sqnr_db,
            "kernel_gap_db": g.kernel_gap_db,
            "e2e_psnr_db": g.e2e_psnr_db,
            "e2e_ssim": g.e2e_ssim,
        },
        "built_on": cpu_mod.detect().to_dict(),
    }
    write_json(stage / BUNDLE, bundle)
    return [stage / BUNDLE, stage / CALLS, stage / IMAGES]


def add_host_images(stage: Path, runners: dict[str, Any]) -> list[np.ndarray]:
    """The build host's INT8 images for the bundle's prompts (a device compares its own with them);
    returns them: the host's device check and the end-to-end check use them rather than making them
    again (the same prompts, seeds and runners give the same images)."""
    from edgeq.runtime.pipeline import GenerateOptions, Pipeline
    from edgeq.runtime.sessions import release_memory

    bundle = json.loads((stage / BUNDLE).read_text())
    if not bundle["images"]:
        return []
    pipe = Pipeline(stage, runners=runners, low_memory=True)  # one stage of the pipeline in memory at a time
    with np.load(stage / IMAGES) as z:
        images = {k: z[k] for k in z.files}
    got = pipe.generate_many([GenerateOptions(prompt=im["prompt"], seed=im["seed"]) for im in bundle["images"]])
    del pipe
    release_memory()  # before the emulated families' checks, each a child process with its own UNet
    for i, img in enumerate(got):
        images[f"int8_{i}"] = img
    np.savez(stage / IMAGES, **images)
    _record_artifacts(stage, [IMAGES])
    return got


def _record_artifacts(stage: Path, rels: list[str]) -> None:
    m = read_manifest(stage)
    m["artifacts"].update(artifact_table(stage, rels))
    write_manifest(stage, m)


def emulated_check(stage: Path, family: str, log=print) -> DeviceCheck | None:
    """``edgeq check`` in a child process whose runtime computes as ``family`` (UNet calls only)."""
    env = {**os.environ, **cpu_mod.emulation_env(family)}
    with tempfile.TemporaryDirectory(prefix="edgeq-emulate-") as tmp:
        cmd = [sys.executable, "-m", "edgeq", "check", str(stage), "--calls-only", "--report", tmp]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        path = Path(tmp) / "device_report.json"
        if not path.is_file():
            log(f"  {family} (emulated): the check did not run (exit {r.returncode}): {r.stderr.strip()[-300:]}")
            return None
        res = DeviceCheck.from_dict(json.loads(path.read_text()))
    return replace(res, emulated=True)


def checked_outputs(stage: Path, checked: dict[tuple[int, int], np.ndarray] | None) -> list[np.ndarray] | None:
    """The deployed UNet's outputs of the bundle's calls, in the bundle's order, from the UNet checks'
    (prompt, step) -> output; None where the checks did not run one of them."""
    if not checked:
        return None
    calls = json.loads((stage / BUNDLE).read_text())["calls"]
    keys = [(c["prompt"], c["step"]) for c in calls]
    return [checked[k] for k in keys] if all(k in checked for k in keys) else None


def check_fidelity(
    ctx: Context,
    target,
    unet: QuantizedUnet | None,
    mode: str,
    held: Capture,
    stage: Path,
    log=print,
    checked: dict[tuple[int, int], np.ndarray] | None = None,
):
    """Write the bundle, then measure the kernels against the exact arithmetic, here and emulated.
    Returns the host's INT8 images of the bundle's prompts (held-out prompts 0.., seeds
    ``HELDOUT_SEED + i``), which the end-to-end check reuses. ``checked``: the deployed variant's
    outputs of the bundle's calls as the UNet checks computed them, on a target whose checks run the
    packaged graphs as the deployable does (``target.checks_run_as_deployed``); the host's device check
    uses them rather than running those calls again (the same graphs, runner and inputs give the same
    numbers)."""
    files = write_bundle(ctx, unet, mode, held, stage)
    _record_artifacts(stage, [str(f.relative_to(stage)) for f in files])
    known = checked_outputs(stage, checked) if getattr(target, "checks_run_as_deployed", False) else None
    if known is not None:
        log(
            f"kernel fidelity: the deployed graphs' outputs of the bundle's {len(known)} calls come from the UNet checks"
        )
    from edgeq.runtime.sessions import one_group_at_a_time

    runners = target.runners()
    plan = ctx.plan
    runtime = target.runtime
    with one_group_at_a_time():  # per-group graphs: one in memory at a time (calls and images in group order)
        images = add_host_images(stage, runners)
        # the files were just written and hashed by the pipeline that made the host images: no second
        # pass; the host's images are the ones just made
        family = cpu_mod.effective_family(runtime)
        host = device_check(
            stage, runners=runners, family=family, recheck=False, generated=images, unet_outputs=known, log=log
        )
    emulated: dict[str, dict] = {}
    cpu = ctx.profile.cpu
    if unet is not None and mode != "float" and cpu is not None and cpu.check_other_families:
        for fam in cpu_mod.FAMILIES:
            if fam != host.family and cpu_mod.can_emulate(fam, runtime):
                log(f"kernel fidelity: checking the {fam} family too ({cpu_mod.emulation_env(fam)})")
                res = emulated_check(stage, fam, log)
                if res is not None:
                    emulated[fam] = res.to_dict()
    m = read_manifest(stage)
    m["cpu"] = {
        "family": plan.cpu_family,
        "weight_bits": plan.weight_bits,
        "reason": plan.weight_bits_reason,
        "built_on": cpu_mod.detect().to_dict(),
    }
    m["kernel_fidelity"] = {"host": host.to_dict(), "emulated": emulated}
    write_manifest(stage, m)
    for fam, res in [(host.family, host.to_dict()), *emulated.items()]:
        gaps = ", ".join(f"{g['gap_db']:.2f}" for g in res["groups"])
        log(f"kernel fidelity ({fam}{', emulated' if fam in emulated else ''}): gap per group [{gaps}] dB")
    return images
