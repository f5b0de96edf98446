"""The accuracy checks and gates of a build folder against its FP32 source; the report.

Run at the end of ``edgeq build`` (reusing its held-out capture) and by ``edgeq check`` on an
existing folder (which re-resolves the build's recorded options against its cache).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgeq.calibrate.capture import Capture
from edgeq.errors import EdgeqError
from edgeq.manifest import artifact_table, read_manifest, write_manifest
from edgeq.stages.config import HELDOUT_SEED, BuildOptions
from edgeq.stages.context import Context


def _gates(manifest: dict, g, unet_rows: list[dict], vae_db: float | None, e2e: dict) -> list:
    from edgeq.verify.checks import Gate

    gates = []
    for row in unet_rows:
        gates.append(Gate("unet", "sqnr_db", row["index"], row["sqnr_db"], g.unet_sqnr_db))
        gates.append(Gate("unet", "cosine", row["index"], row["cosine"], g.unet_cosine))
    if vae_db is not None:
        gates.append(Gate("vae_decoder", "psnr_db", None, vae_db, g.vae_psnr_db))
    gates.append(Gate("pipeline", "psnr_db", None, e2e["psnr_db"], g.e2e_psnr_db))
    gates.append(Gate("pipeline", "ssim", None, e2e["ssim"], g.e2e_ssim))
    if "adherence" in e2e:
        for attr in ("colour", "shape"):
            drop = e2e["adherence_fp32"][attr] - e2e["adherence"][attr]
            gates.append(
                Gate("pipeline", f"adherence_{attr}_drop", None, drop, g.adherence_drop, higher_is_better=False)
            )
    fid = manifest.get("kernel_fidelity", {})
    cpu = manifest.get("cpu", {})
    if fid and cpu.get("family"):  # CPU targets: their kernels must compute what the graph says
        runs = [fid["host"]] + [
            d for f, d in fid.get("emulated", {}).items() if cpu["family"] in (f, "portable")
        ]  # an emulated family gates only builds made for it (or portable ones); else it is reported
        for d in runs:
            for row in d["groups"]:
                gates.append(
                    Gate(
                        "unet",
                        f"kernel_gap_db[{d['family']}{', emulated' if d.get('emulated') else ''}]",
                        row["index"],
                        row["gap_db"],
                        g.kernel_gap_db,
                        higher_is_better=False,
                    )
                )
    for name, info in manifest["components"].items():
        if "rule_violations" in info:  # a target's structural rules (TensorRT's Q/DQ rules)
            n = info["rule_violations"]["count"]
            rules = info["rule_violations"]["rules"]
            gates.append(Gate(name, f"{rules}_rule_violations", None, n, 0, higher_is_better=False))
    return gates


class DecodeOnce:
    """A runner that computes each distinct input once (an FP32 decoder asked twice for one latent)."""

    def __init__(self, runner):
        self.runner = runner
        self.input_names = runner.input_names
        self._done: dict[bytes, dict[str, np.ndarray]] = {}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import hashlib

        h = hashlib.sha256()
        for k in sorted(feeds):
            v = np.ascontiguousarray(feeds[k])
            h.update(f"{k}|{v.dtype}|{v.shape}|".encode())
            h.update(v.tobytes())
        key = h.digest()
        if key not in self._done:
            self._done[key] = self.runner.run(feeds)
        return self._done[key]


def check_folder(
    folder: Path,
    ctx: Context | None = None,
    held_cap: Capture | None = None,
    int8_images: list[np.ndarray] | None = None,
    log=print,
):
    """Accuracy checks of a build folder against its FP32 source; writes the report, updates the
    manifest. ``int8_images``: the folder's images of the first held-out prompts (seeds
    ``HELDOUT_SEED + i``), made moments ago by the build's kernel-fidelity stage."""
    from edgeq.runtime.pipeline import Pipeline
    from edgeq.runtime.sessions import LazyRunner, OrtRunner, one_group_at_a_time
    from edgeq.stages.calibration import capture_set
    from edgeq.stages.context import prepare
    from edgeq.stages.memory import PeakRss
    from edgeq.targets import for_manifest
    from edgeq.verify import report as report_mod
    from edgeq.verify.checks import unet_groups, vae_psnr

    manifest = read_manifest(folder)
    if manifest.get("kind") != "int8":
        raise EdgeqError(f"{folder} is an FP32 export, not a quantized build", "check a folder made by `edgeq build`")
    # a build's own stages (its context): their times and peaks join the manifest's
    stage_times = dict(ctx.timings) if ctx is not None else {}
    stage_peaks = dict(ctx.stages.peak_rss_gb) if ctx is not None else {}
    # the checks' own peak memory; per-group graphs are held one at a time (calls and images in group order)
    with PeakRss() as peak, one_group_at_a_time():
        if ctx is None:
            opts = BuildOptions.from_dict(manifest["build_options"])
            ctx = prepare(replace(opts, cache_dir=Path(manifest["cache_dir"])), log)
        if held_cap is None:
            held_cap = capture_set(ctx, "heldout")
        t0 = time.time()
        target = for_manifest(manifest)
        qpipe = Pipeline(folder, runners=target.runners())
        # FP32 images come from the held-out capture's final latents: only the FP32 VAE decoder is needed
        # the VAE decoder's PSNR and the end-to-end check decode the same held-out latents: once
        fp32_vae = DecodeOnce(OrtRunner(ctx.export.path("vae_decoder")))
        q = manifest["quantization"]
        chosen = q["group_mode"]
        unet_rows = q.get("variants", {}).get(chosen, [])
        deployed = target.deployed_unet_runner(folder, manifest)
        if deployed is not None and unet_rows:  # compiled engines: measure the UNet as it will run
            fp32_unet = LazyRunner(ctx.export.path("unet"))
            unet_rows = unet_groups(fp32_unet, deployed, held_cap, q["groups"], "check unet (engine)")
        vae_db = None
        if "int8" in manifest["components"]["vae_decoder"].get("precision", ""):
            vae_db = vae_psnr(fp32_vae, qpipe.runner("vae_decoder"), held_cap)
        e2e, grid = report_mod.end_to_end(
            fp32_vae,
            qpipe,
            list(held_cap.settings.prompts),
            HELDOUT_SEED,
            tiny_sd=ctx.spec.calibration_data == "tiny-sd",
            reference=list(held_cap.vae_inputs()),  # the held-out capture is the FP32 pipeline's run
            known=int8_images,
        )
        gates = _gates(manifest, ctx.profile.gates, unet_rows, vae_db, e2e)
        passed = all(gates)
    timings = {**manifest.get("timings", {}), **stage_times, "check_e2e_s": round(time.time() - t0, 1)}
    peaks = {**manifest.get("peak_rss_gb", {}), **stage_peaks, "check_e2e_s": peak.gb}
    rep = report_mod.Report(
        passed=passed,
        target=manifest["target"],
        model=manifest["model"]["name"],
        gates=[x.to_dict() for x in gates],
        unet_groups=unet_rows,
        e2e=e2e,
        group_mode=chosen,
        variants=q.get("variants", {}),
        gains=q.get("gains", {}),
        timings=timings,
        peak_rss_gb=peaks,
        quantized=manifest.get("quant_counts", {}),
        settings=q.get("settings", {}),
        usability={k: v["usability"] for k, v in manifest["components"].items() if "usability" in v},
        engines=manifest.get("engines_status", {}),
        precision=q.get("precision", {}),
        cpu=manifest.get("cpu", {}),
        kernel_fidelity=manifest.get("kernel_fidelity", {}),
        genai=manifest.get("genai", {}),
    )
    report_mod.write(folder, rep, grid)
    report_files = ["report.json", "report.md", "report.html", "grid.png", "sqnr_per_group.png"]
    report_files += [f for f in ("tradeoff.png",) if (folder / f).is_file()]
    manifest["artifacts"].update(artifact_table(folder, report_files))
    manifest.update(
        status="passed" if passed else "failed",
        gates=[x.to_dict() for x in gates],
        timings=timings,
        peak_rss_gb=peaks,
    )
    write_manifest(folder, manifest)
    return rep
