"""``edgeq check BUILD``: the build's gates re-run on the machine it is deployed to.

A build carries a verification bundle (``verify/``, written by :mod:`edgeq.stages.fidelity`):

* held-out UNet calls, a few per timestep group: their inputs, the FP32 UNet's output and the
  output of the *exact* Q/DQ arithmetic of the deployed graph (ONNX Runtime with graph
  optimisation off, on the build host: integer math, the same on every CPU);
* a few FP32 reference images with their prompts and seeds, and the build host's INT8 images.

Here the deployed runtime runs the same calls and prompts. Per timestep group, the report separates
*quantization error* (exact arithmetic against FP32, a property of the graph) from *kernel error*
(the runtime's int8 kernels against the exact arithmetic, a property of this CPU and runtime).
Nothing here imports torch or diffusers; every artifact's sha256 is verified before anything runs.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import EdgeqError
from edgeq.verify.metrics import psnr_db, sqnr_db, ssim

BUNDLE_DIR = "verify"
BUNDLE = "verify/bundle.json"
CALLS = "verify/unet_calls.npz"
IMAGES = "verify/images.npz"
BUNDLE_FORMAT = 1
CAUSES = {
    "x86-novnni": "this CPU sums u8 x s8 pairs in int16 (VPMADDUBSW, no VNNI) and saturates 8-bit weights",
}


@dataclass(frozen=True)
class GroupFidelity:
    """One timestep group: quantization error, deployed error, and the kernels' share of it."""

    index: int
    calls: int
    exact_db: float  # exact Q/DQ arithmetic vs FP32: the graph's quantization error
    deployed_db: float  # this runtime's kernels vs FP32
    gap_db: float  # exact_db - deployed_db: what the kernels lose
    kernel_db: float  # deployed vs exact arithmetic (inf: bit-identical)


@dataclass(frozen=True)
class DeviceCheck:
    """What ``edgeq check`` measured on one machine (``device_report.json`` is :meth:`to_dict`)."""

    passed: bool
    family: str  # the int8 kernel family the runtime computed as here
    cpu: dict[str, Any]
    runtime: str
    built_for: str | None  # the build's family (None: no CPU kernels)
    built_on: dict[str, Any]
    groups: list[GroupFidelity]
    e2e: dict[str, Any]
    gates: list[dict]
    emulated: bool = False  # the family was emulated by capping the runtime's instruction set
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def failed_gates(self) -> list[dict]:
        return [g for g in self.gates if not g["passed"]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeviceCheck:
        return cls(**{**d, "groups": [GroupFidelity(**g) for g in d["groups"]]})


def read_bundle(folder: Path) -> dict[str, Any]:
    path = folder / BUNDLE
    if not path.is_file():
        raise EdgeqError(
            f"{folder} has no verification bundle ({BUNDLE})",
            "rebuild it with this edgeq (builds carry one since edgeq 0.5), or check it on the build host "
            "with `edgeq check BUILD --full`",
        )
    data = json.loads(path.read_text())
    if data.get("format") != BUNDLE_FORMAT:
        raise EdgeqError(f"{path} has format {data.get('format')}, this edgeq reads {BUNDLE_FORMAT}", "rebuild it")
    return data


def _sqnr(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    return sqnr_db(np.stack(ref), np.stack(got))


def kernel_rows(bundle: dict[str, Any], calls: dict[str, np.ndarray], outputs: list[np.ndarray]) -> list[GroupFidelity]:
    """Per group: exact vs FP32, deployed vs FP32, and deployed vs exact, from the bundle's calls."""
    by_group: dict[int, list[int]] = {}
    for k, c in enumerate(bundle["calls"]):
        by_group.setdefault(c["group"], []).append(k)
    rows = []
    for g in sorted(by_group):
        ks = by_group[g]
        fp32 = [calls[f"c{k}.fp32"] for k in ks]
        exact = [calls[f"c{k}.exact"] for k in ks]
        got = [outputs[k] for k in ks]
        e, d = _sqnr(fp32, exact), _sqnr(fp32, got)
        rows.append(GroupFidelity(g, len(ks), e, d, max(e - d, 0.0) if np.isfinite(e) else 0.0, _sqnr(exact, got)))
    return rows


def run_calls(unet, bundle: dict[str, Any], calls: dict[str, np.ndarray]) -> list[np.ndarray]:
    out = []
    for k, c in enumerate(bundle["calls"]):
        feeds = {name: calls[f"c{k}.in.{name}"] for name in c["inputs"]}
        out.append(unet.run(feeds)["out_sample"])
    return out


def device_check(
    folder: Path,
    runners: dict[str, Any] | None = None,
    family: str | None = None,
    images: bool = True,
    recheck: bool = True,
    generated: list[np.ndarray] | None = None,
    unet_outputs: list[np.ndarray] | None = None,
    log=print,
) -> DeviceCheck:
    """Verify the artifacts, run the bundle's UNet calls and images, gate them (:func:`write_report`
    writes the result). ``recheck=False``: trust the integrity stamp of files hashed moments ago.
    ``generated``: the bundle's images as these runners just made them (the build host's own check),
    not made a second time; ``unet_outputs``: likewise the UNet's outputs of the bundle's calls."""
    from edgeq.manifest import read_manifest
    from edgeq.runtime import cpu as cpu_mod
    from edgeq.runtime import integrity
    from edgeq.runtime.pipeline import GenerateOptions, Pipeline
    from edgeq.verify.checks import Gate

    t0 = time.time()
    folder = Path(folder)
    manifest = read_manifest(folder)
    n = integrity.verify(folder, manifest, trust_stamp=not recheck)
    log(f"integrity: {len(manifest.get('artifacts', {}))} files match their sha256 ({n} hashed now)")
    bundle = read_bundle(folder)
    runtime = manifest["components"]["unet"].get("runtime", "onnxruntime")
    here = cpu_mod.detect()
    family = family or cpu_mod.effective_family(runtime)
    if runners is None:
        from edgeq.targets import for_manifest

        runners = for_manifest(manifest).runners()
    pipe = Pipeline(folder, runners=runners, low_memory=True)  # loads only what it runs
    with np.load(folder / CALLS) as z:
        calls = {k: z[k] for k in z.files}
    have_outputs = unet_outputs is not None and len(unet_outputs) == len(bundle["calls"])
    outputs: list[np.ndarray] | None = list(unet_outputs) if have_outputs else None
    make_images = (
        images and bool(bundle["images"]) and not (generated is not None and len(generated) == len(bundle["images"]))
    )
    got = list(generated) if images and bundle["images"] and not make_images else None
    if make_images:  # the bundle's calls while the images' UNet is loaded: one load of it, not two

        def bundle_calls(unet) -> None:
            nonlocal outputs
            if outputs is None:
                outputs = run_calls(unet, bundle, calls)

        got = pipe.generate_many(
            [GenerateOptions(prompt=im["prompt"], seed=im["seed"]) for im in bundle["images"]], with_unet=bundle_calls
        )
    if outputs is None:
        outputs = run_calls(pipe.runner("unet"), bundle, calls)
    rows = kernel_rows(bundle, calls, outputs)
    g = bundle["gates"]
    gates: list[Gate] = []
    for r in rows:
        gates.append(Gate("unet", "sqnr_db", r.index, r.deployed_db, g["unet_sqnr_db"]))
        gates.append(Gate("unet", "kernel_gap_db", r.index, r.gap_db, g["kernel_gap_db"], higher_is_better=False))
    e2e: dict[str, Any] = {}
    if got is not None:
        with np.load(folder / IMAGES) as z:
            ref = {k: z[k] for k in z.files}
        fp32 = [ref[f"fp32_{i}"] for i in range(len(got))]
        e2e = {
            "images": len(got),
            "psnr_db": float(np.mean([min(psnr_db(a, b), 100.0) for a, b in zip(fp32, got)])),
            "ssim": float(np.mean([ssim(a, b) for a, b in zip(fp32, got)])),
        }
        host = [ref[f"int8_{i}"] for i in range(len(got)) if f"int8_{i}" in ref]
        if host:  # this machine's images against the build host's INT8 images: the kernels' share end to end
            e2e["psnr_vs_build_host_db"] = float(np.mean([min(psnr_db(a, b), 100.0) for a, b in zip(host, got)]))
        gates.append(Gate("pipeline", "psnr_db", None, e2e["psnr_db"], g["e2e_psnr_db"]))
        gates.append(Gate("pipeline", "ssim", None, e2e["ssim"], g["e2e_ssim"]))
    notes = []
    built_for = manifest.get("cpu", {}).get("family")
    worst = max((r.gap_db for r in rows), default=0.0)
    if worst > g["kernel_gap_db"]:
        cause = CAUSES.get(family, f"this runtime's int8 kernels on {family} differ from the exact arithmetic")
        fix = (
            "rebuild with `--cpu portable` (7-bit weights, exact on every family) or `--cpu " + family + "`"
            if family in cpu_mod.SATURATING
            else "rebuild on this machine (`--cpu host`) and compare, or report it"
        )
        notes.append(f"kernel gap {worst:.1f} dB: {cause}; fix: {fix}")
    result = DeviceCheck(
        passed=all(gates),
        family=family,
        cpu=here.to_dict(),
        runtime=runtime,
        built_for=built_for,
        built_on=bundle.get("built_on", {}),
        groups=rows,
        e2e=e2e,
        gates=[x.to_dict() for x in gates],
        seconds=round(time.time() - t0, 1),
        notes=notes,
    )
    return result


def markdown(r: DeviceCheck) -> str:
    lines = [
        f"# Device check: {'PASSED' if r.passed else 'FAILED'}",
        "",
        f"- CPU here: {r.cpu.get('model') or r.cpu.get('machine')} ({' '.join(r.cpu.get('flags', []))}); "
        f"int8 kernel family **{r.family}**" + (" (emulated by capping the instruction set)" if r.emulated else ""),
        f"- runtime: {r.runtime}; built for: {r.built_for or 'n/a'}; built and checked on: "
        f"{r.built_on.get('family', '?')} ({r.built_on.get('model', '')})",
        "",
        "## UNet per timestep group (bundle calls)",
        "",
        "| group | calls | exact Q/DQ vs FP32 dB | deployed vs FP32 dB | kernel gap dB | deployed vs exact dB |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {g.index} | {g.calls} | {g.exact_db:.2f} | {g.deployed_db:.2f} | {g.gap_db:.2f} | {g.kernel_db:.1f} |"
        for g in r.groups
    ]
    if r.e2e:
        lines += ["", "## End to end", ""] + [f"- {k}: {v:.4g}" for k, v in r.e2e.items()]
    lines += ["", "## Gates", ""]
    for g in r.gates:
        where = f" group {g['group']}" if g["group"] is not None else ""
        op = ">=" if g["higher_is_better"] else "<="
        mark = "pass" if g["passed"] else "FAIL"
        lines.append(
            f"- {mark}: {g['component']}{where} {g['metric']} = {g['value']:.4g} (needs {op} {g['threshold']:g})"
        )
    if r.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r.notes]
    return "\n".join(lines) + "\n"


def write_report(folder: Path, r: DeviceCheck, out: Path | None = None) -> Path:
    """``device_report.json`` and ``device_report.md`` beside the build's report (or in ``out``)."""
    from edgeq.fsutil import write_json

    dest = Path(out) if out is not None else folder
    try:
        dest.mkdir(parents=True, exist_ok=True)
        write_json(dest / "device_report.json", r.to_dict())
        tmp = dest / f".device_report.md.{os.getpid()}"
        tmp.write_text(markdown(r))
        tmp.replace(dest / "device_report.md")
    except OSError as e:
        raise EdgeqError(f"cannot write the device report in {dest}: {e.strerror}", "give --report DIR") from None
    return dest / "device_report.json"


__all__ = ["DeviceCheck", "GroupFidelity", "device_check", "kernel_rows", "read_bundle", "sqnr_db", "write_report"]
