"""edgeq build: export -> capture -> statistics -> groups and ranges -> Q/DQ -> target -> checks -> report.

Each stage writes its result under the cache folder (``build/.cache/<model>-<weights hash>/`` by
default) keyed by everything that decides it, so a rerun reuses what has not changed. The build
folder itself is written under a temporary name and renamed when complete; a build that fails a
gate is kept, marked failed in its manifest, and the command exits non-zero.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeq.calibrate.capture import Capture, CaptureSettings, capture, read_prompts
from edgeq.calibrate.collect import Stats, collect
from edgeq.calibrate.grouping import Group, by_profile, uniform
from edgeq.calibrate.histogram import METHODS, select_range, select_shared_range
from edgeq.errors import EdgeqError
from edgeq.fsutil import ensure_writable_dir, staged_dir, write_json
from edgeq.manifest import artifact_table, library_versions, read_manifest, write_manifest
from edgeq.models.weights import WeightSource, resolve
from edgeq.quantize.insert import QDQ_VERSION
from edgeq.quantize.policy import Decision, decide, summary, tensors_to_calibrate
from edgeq.quantize.profile import ComponentPolicy, Profile, load_profile
from edgeq.verify.checks import unet_groups

ROOT = Path(__file__).resolve().parents[1]
GROUP_MODES = ("shared", "per-group", "auto")
GROUPINGS = ("uniform", "profile")
HELDOUT_SEED = 100_000  # held-out images use seeds from here on; calibration uses --seed + index


@dataclass(frozen=True)
class BuildOptions:
    """Everything `edgeq build` takes. None means: the target profile's or the preset's default."""

    model: str
    target: str = "ort-cpu"
    out: Path | None = None
    weights: Path | None = None
    config_dir: Path | None = None
    groups: int | None = None
    group_mode: str | None = None
    grouping: str | None = None
    range_method: str | None = None
    calib_prompts: Path | None = None
    num_calib: int | None = None
    heldout_prompts: Path | None = None
    num_heldout: int | None = None
    seed: int = 0
    cache_dir: Path | None = None
    onnx_only: bool = False  # engine targets (TensorRT): stop at the engine-ready ONNX and its checks


@dataclass
class Context:
    """The resolved inputs of a build and where its cached stages live."""

    opts: BuildOptions
    source: WeightSource
    profile: Profile
    cache: Path
    export_dir: Path
    export_manifest: dict[str, Any]
    groups_n: int
    group_mode: str
    grouping: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def spec(self):
        return self.source.spec

    def prompts(self, which: str) -> list[str]:
        given = self.opts.calib_prompts if which == "calibration" else self.opts.heldout_prompts
        path = (
            given
            or ROOT
            / "calibration_data"
            / self.spec.calibration_data
            / f"{'calibration' if which == 'calibration' else 'heldout'}.txt"
        )
        prompts = read_prompts(path)
        n = self.opts.num_calib if which == "calibration" else self.opts.num_heldout
        default = 32 if which == "calibration" else (64 if self.spec.calibration_data == "tiny-sd" else 8)
        n = default if n is None else n
        if n < 1:
            raise EdgeqError(f"--num-{'calib' if which == 'calibration' else 'heldout'} must be at least 1, got {n}")
        return prompts[:n]


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare(opts: BuildOptions, log=print) -> Context:
    """Resolve weights and profile, validate options, export (or reuse) the FP32 build."""
    from edgeq.frontend.export import ExportSettings, export

    profile = load_profile(opts.target)
    groups_n = opts.groups if opts.groups is not None else profile.calibration.groups
    mode = opts.group_mode or profile.calibration.group_mode
    grouping = opts.grouping or profile.calibration.grouping
    if groups_n < 1:
        raise EdgeqError(f"--groups must be at least 1, got {groups_n}")
    if mode not in GROUP_MODES:
        raise EdgeqError(f"--group-mode {mode!r} is not one of {', '.join(GROUP_MODES)}")
    if grouping not in GROUPINGS:
        raise EdgeqError(f"--grouping {grouping!r} is not one of {', '.join(GROUPINGS)}")
    if opts.range_method and opts.range_method not in METHODS:
        raise EdgeqError(f"--range-method {opts.range_method!r} is not one of {', '.join(METHODS)}")
    source = resolve(opts.model, opts.weights, opts.config_dir)
    if opts.out is not None:
        ensure_writable_dir(opts.out)
    cache = (
        opts.cache_dir
        or Path("build") / ".cache" / f"{source.spec.name.strip('./').replace('/', '_')}-{source.fingerprint()[:12]}"
    )
    ensure_writable_dir(cache)
    t0 = time.time()
    ex = profile.export
    settings = ExportSettings(opset=ex.opset, static=ex.static, batch=ex.batch, height=ex.height, width=ex.width)
    folder = "fp32" + ("-static" if ex.static else "") + (f"-opset{ex.opset}" if ex.opset != 17 else "")
    res = export(source, cache / folder, settings, log=log)
    ctx = Context(opts, source, profile, cache, res.folder, read_manifest(res.folder), groups_n, mode, grouping)
    ctx.timings["export_s"] = round(time.time() - t0, 1)
    return ctx


def capture_set(ctx: Context, which: str) -> Capture:
    p = ctx.export_manifest["pipeline"]
    prompts = ctx.prompts(which)
    seed = ctx.opts.seed if which == "calibration" else HELDOUT_SEED
    settings = CaptureSettings(
        tuple(prompts), seed, p["steps"], p["guidance"], p["scheduler"], source=ctx.export_manifest["cache_key"]
    )
    t0 = time.time()
    cap = capture(
        ctx.export_dir, ctx.cache / f"capture-{which}-{_key(asdict(settings))}", settings, desc=f"capture {which}"
    )
    ctx.timings[f"capture_{which}_s"] = round(time.time() - t0, 1)
    return cap


@dataclass
class ComponentCalibration:
    name: str
    policy: ComponentPolicy
    decisions: list[Decision]
    tensors: list[str]
    stats: Stats


def calibrate(ctx: Context, cap: Capture, log=print) -> dict[str, ComponentCalibration]:
    """Streaming statistics for every component the profile quantizes (UNet per step, VAE once)."""
    import onnx

    out = {}
    for name in ("unet", "vae_decoder", "text_encoder"):
        policy = ctx.profile.policy(name)
        if name not in ctx.export_manifest["components"]:
            continue
        path = ctx.export_dir / ctx.export_manifest["components"][name]["path"]
        graph = onnx.load(str(path), load_external_data=False).graph
        decisions = decide(graph, policy)
        if policy.mode != "int8":
            out[name] = ComponentCalibration(name, policy, decisions, [], Stats([], []))
            continue
        if name == "text_encoder":
            raise EdgeqError("quantizing the text encoder is not supported yet", 'set [text_encoder] mode = "float"')
        tensors = tensors_to_calibrate(graph, decisions)
        key = _key(str(cap.folder), tensors, ctx.export_manifest["cache_key"])
        stats_path = ctx.cache / f"stats-{name}-{key}.npz"
        t0 = time.time()
        if stats_path.is_file():
            stats = Stats.load(stats_path)
            log(f"reusing statistics {stats_path.name}")
        else:
            collect_isolated(path, tensors, cap, name, stats_path)
            stats = Stats.load(stats_path)
        ctx.timings[f"statistics_{name}_s"] = round(time.time() - t0, 1)
        out[name] = ComponentCalibration(name, policy, decisions, tensors, stats)
    return out


def _collect_child(path: Path, tensors: list[str], cap: Capture, name: str, out: Path, err: Path) -> None:
    """Child process body of :func:`collect_isolated`."""
    try:
        if name == "unet":
            samples = ((s.step, s.feeds) for s in cap.unet_samples())
            stats = collect(path, tensors, samples, list(cap.timesteps), len(cap), desc="statistics unet")
        else:
            samples = ((0, {"latent_sample": z}) for z in cap.vae_inputs())
            stats = collect(path, tensors, samples, [0.0], len(cap.settings.prompts), desc=f"statistics {name}")
        stats.save(out)
    except EdgeqError as e:
        err.write_text(json.dumps({"message": e.message, "hint": e.hint}))
        raise SystemExit(2) from None


def collect_isolated(path: Path, tensors: list[str], cap: Capture, name: str, out: Path) -> None:
    """Statistics of ``name`` into ``out``, collected in a child process.

    ONNX Runtime's session for the augmented graph holds the weights plus every requested activation
    of one call (7.4 GB on the SD1.5 UNet). In one process that memory is not all given back, and
    Q/DQ insertion (4.2 GB alone) stacked on it: 8.5 GB. A child returns it to the system, so a build's
    peak is the larger of the two stages, not their sum.
    """
    import multiprocessing
    import tempfile

    fd, err_name = tempfile.mkstemp(prefix=".stats-err-", suffix=".json", dir=out.parent)
    os.close(fd)
    err = Path(err_name)
    try:
        proc = multiprocessing.get_context("spawn").Process(
            target=_collect_child, args=(path, tensors, cap, name, out, err)
        )
        proc.start()
        proc.join()
        if err.stat().st_size:
            e = json.loads(err.read_text())
            raise EdgeqError(e["message"], e["hint"])
        if proc.exitcode != 0 or not out.is_file():
            raise RuntimeError(f"statistics of {name} failed in the child process (exit {proc.exitcode}); see above")
    finally:
        err.unlink(missing_ok=True)


def make_groups(ctx: Context, stats: Stats) -> list[Group]:
    n = min(ctx.groups_n, len(stats.timesteps))
    if ctx.grouping == "uniform" or n == 1:
        return uniform(stats.timesteps, n)
    return by_profile(stats.timesteps, stats.absmax_profile(), n)


def choose_ranges(cal: ComponentCalibration, groups: list[Group], method: str) -> tuple[list[dict], dict]:
    """Per-group ranges and the one shared range of every tensor."""
    sym = cal.policy.activation_symmetric
    bits = 16 if "16" in cal.policy.activation_type else 8
    per_group: list[dict[str, tuple[float, float]]] = [{} for _ in groups]
    shared: dict[str, tuple[float, float]] = {}
    for t in cal.tensors:
        hists = [cal.stats.group(t, g.steps) for g in groups]
        for g, h in enumerate(hists):
            per_group[g][t] = tuple(float(v) for v in select_range(h, method, sym, bits=bits))
        shared[t] = tuple(
            float(v) for v in select_shared_range(hists, [len(g.steps) for g in groups], method, sym, bits)
        )
    return per_group, shared


@dataclass
class UnetVariants:
    """The UNet quantized both ways, so the report can show what grouping gains."""

    groups: list[Group]
    shared_dir: Path
    per_group_dir: Path | None
    plan: dict[str, Any]
    metrics: dict[str, list[dict]] = field(default_factory=dict)


def quantize_unet(ctx: Context, cal: ComponentCalibration, log=print) -> UnetVariants:
    import onnx

    from edgeq.quantize.insert import (
        quantize_graph,
        read_activation_qparams,
        save_group_graphs,
        weight_summary,
    )

    method = ctx.opts.range_method or cal.policy.range_method
    groups = make_groups(ctx, cal.stats)
    per_group, shared = choose_ranges(cal, groups, method)
    fp32 = ctx.export_dir / ctx.export_manifest["components"]["unet"]["path"]
    key = _key(
        QDQ_VERSION,
        ctx.export_manifest["cache_key"],
        asdict(cal.policy),
        method,
        [g.to_dict() for g in groups],
        shared,
        per_group,
    )
    root = ctx.cache / f"quant-unet-{key}"
    t0 = time.time()
    if not (root / "done").is_file():
        shutil.rmtree(root, ignore_errors=True)
        base = quantize_graph(fp32, cal.decisions, cal.policy, shared)
        (root / "shared").mkdir(parents=True)
        onnx.save_model(
            copy.deepcopy(base),
            str(root / "shared" / "model.onnx"),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="model.onnx_data",
            size_threshold=1024,
        )
        del base
        if len(groups) > 1:
            save_group_graphs(
                lambda g: quantize_graph(fp32, cal.decisions, cal.policy, per_group[g]), len(groups), root / "per-group"
            )
        (root / "done").write_text("ok\n")
    ctx.timings["quantize_unet_s"] = round(time.time() - t0, 1)
    shared_model = onnx.load(str(root / "shared" / "model.onnx"), load_external_data=True)
    shared_q = read_activation_qparams(shared_model, cal.tensors)
    group_q = (
        [shared_q]
        if len(groups) == 1
        else [
            read_activation_qparams(
                onnx.load(str(root / "per-group" / f"model.g{g}.onnx"), load_external_data=False), cal.tensors
            )
            for g in range(len(groups))
        ]
    )

    def entry(rng: tuple[float, float], q: dict, t: str) -> dict:
        scale, zp = q.get(t, (None, None))
        return {"rmin": rng[0], "rmax": rng[1], "scale": scale, "zero_point": zp}

    plan = {
        "component": "unet",
        "range_method": method,
        "policy": asdict(cal.policy),
        "groups": [g.to_dict() for g in groups],
        "activations": {
            t: {
                "shared": entry(shared[t], shared_q, t),
                "per_group": [entry(per_group[g][t], group_q[g], t) for g in range(len(groups))],
            }
            for t in cal.tensors
        },
        "weights": weight_summary(shared_model),
        "quantized_nodes": [d.node for d in cal.decisions if d.quantized],
        "excluded_nodes": [
            {"node": d.node, "op_type": d.op_type, "reason": d.reason} for d in cal.decisions if not d.quantized
        ],
    }
    per_dir = root / "per-group" if len(groups) > 1 else None
    return UnetVariants(groups, root / "shared", per_dir, plan)


def quantize_single(ctx: Context, cal: ComponentCalibration) -> tuple[Path, dict]:
    """A component calibrated as one group (the VAE decoder)."""
    import onnx

    from edgeq.quantize.insert import quantize_graph, read_activation_qparams, weight_summary

    method = ctx.opts.range_method or cal.policy.range_method
    bits = 16 if "16" in cal.policy.activation_type else 8
    ranges = {
        t: tuple(
            float(v) for v in select_range(cal.stats.group(t, [0]), method, cal.policy.activation_symmetric, bits=bits)
        )
        for t in cal.tensors
    }
    fp32 = ctx.export_dir / ctx.export_manifest["components"][cal.name]["path"]
    key = _key(
        QDQ_VERSION,
        ctx.export_manifest["cache_key"],
        library_versions().get("onnxruntime"),
        asdict(cal.policy),
        method,
        ranges,
    )
    root = ctx.cache / f"quant-{cal.name}-{key}"
    if not (root / "done").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        onnx.save_model(
            quantize_graph(fp32, cal.decisions, cal.policy, ranges),
            str(root / "model.onnx"),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="model.onnx_data",
            size_threshold=1024,
        )
        (root / "done").write_text("ok\n")
    model = onnx.load(str(root / "model.onnx"), load_external_data=True)
    q = read_activation_qparams(model, cal.tensors)
    plan = {
        "component": cal.name,
        "range_method": method,
        "policy": asdict(cal.policy),
        "activations": {
            t: {"rmin": r[0], "rmax": r[1], "scale": q.get(t, (None, None))[0], "zero_point": q.get(t, (None, None))[1]}
            for t, r in ranges.items()
        },
        "weights": weight_summary(model),
        "quantized_nodes": [d.node for d in cal.decisions if d.quantized],
        "excluded_nodes": [
            {"node": d.node, "op_type": d.op_type, "reason": d.reason} for d in cal.decisions if not d.quantized
        ],
    }
    return root, plan


def build(opts: BuildOptions, until: str | None = None, log=print):
    """Run the stages up to ``until`` (calibrate | quantize | None = all, checks included).

    Returns (report or None, build folder or None).
    """
    from edgeq.runtime.sessions import OrtRunner
    from edgeq.targets import get_target

    t_start = time.time()
    target = get_target(load_profile(opts.target).name)
    ctx = prepare(opts, log)
    cal_cap = capture_set(ctx, "calibration")
    cals = calibrate(ctx, cal_cap, log)
    if until == "calibrate":
        return None, None
    out = opts.out or Path("build") / f"{ctx.spec.name.strip('./').replace('/', '_')}-{ctx.profile.name}"
    held_cap = capture_set(ctx, "heldout")
    unet = quantize_unet(ctx, cals["unet"], log) if cals["unet"].policy.mode == "int8" else None
    vae_cal = cals.get("vae_decoder")
    vae_dir, vae_plan = quantize_single(ctx, vae_cal) if vae_cal and vae_cal.policy.mode == "int8" else (None, None)
    unet_info: dict[str, Any] = {}
    chosen = "float"
    if unet is not None:
        groups = [x.to_dict() for x in unet.groups]
        t0 = time.time()
        fp32_unet = OrtRunner(ctx.export_dir / ctx.export_manifest["components"]["unet"]["path"])
        unet.metrics["shared"] = unet_groups(
            fp32_unet,
            target.unet_runner(ctx, [(unet.shared_dir / "model.onnx", groups[0])]),
            held_cap,
            groups,
            "check unet (shared)",
        )
        if unet.per_group_dir is not None:
            runner = target.unet_runner(
                ctx, [(unet.per_group_dir / f"model.g{i}.onnx", gr) for i, gr in enumerate(groups)]
            )
            unet.metrics["per-group"] = unet_groups(fp32_unet, runner, held_cap, groups, "check unet (per-group)")
        ctx.timings["check_unet_s"] = round(time.time() - t0, 1)
        chosen = _choose_mode(ctx, unet)
        unet_info = {"mode": chosen, "groups": groups, "variants": unet.metrics}
    with staged_dir(out) as stage:
        files, components = target.package(ctx, stage, unet, chosen, vae_dir)
        write_json(
            stage / "quant_plan.json",
            {
                "target": ctx.profile.name,
                "model": ctx.spec.name,
                "group_mode": chosen,
                "unet": unet.plan if unet else None,
                "vae_decoder": vae_plan,
            },
        )
        (stage / "quant_summary.txt").write_text("".join(summary(c.decisions) for c in cals.values() if c.decisions))
        files += [stage / "quant_plan.json", stage / "quant_summary.txt"]
        manifest = _manifest(ctx, stage, files, components, unet_info, chosen, status="unchecked")
        manifest["build_options"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()}
        manifest["cache_dir"] = str(ctx.cache.resolve())
        manifest["quant_counts"] = _quant_counts(cals)
        ctx.timings["build_s"] = round(time.time() - t_start, 1)
        manifest["timings"] = dict(ctx.timings)
        if hasattr(target, "engines_status"):
            manifest["engines_status"] = target.engines_status(ctx, out)
        write_manifest(stage, manifest)
        if until == "quantize":
            return None, out
        rep = check_folder(stage, ctx=ctx, held_cap=held_cap)
    if hasattr(target, "finish"):  # engines, compiled after the portable checks (TensorRT)
        rep = target.finish(out, ctx, held_cap, rep, log)
    return rep, out


def check_folder(folder: Path, ctx: Context | None = None, held_cap: Capture | None = None, log=print):
    """Accuracy checks of a build folder against its FP32 source; writes the report, updates the manifest."""
    from edgeq.runtime.pipeline import Pipeline
    from edgeq.runtime.sessions import OrtRunner
    from edgeq.targets import get_target
    from edgeq.verify import report as report_mod
    from edgeq.verify.checks import Gate, vae_psnr

    manifest = read_manifest(folder)
    if manifest.get("kind") != "int8":
        raise EdgeqError(f"{folder} is an FP32 export, not a quantized build", "check a folder made by `edgeq build`")
    if ctx is None:
        opts = BuildOptions(
            **{k: Path(v) if k in _PATH_OPTS and v is not None else v for k, v in manifest["build_options"].items()}
        )
        ctx = prepare(replace(opts, cache_dir=Path(manifest["cache_dir"])), log)
        held_cap = capture_set(ctx, "heldout")
    assert held_cap is not None
    t0 = time.time()
    target = get_target(manifest["target"])
    qpipe = Pipeline(folder, runners=target.runners())
    fpipe = Pipeline(ctx.export_dir)
    g = ctx.profile.gates
    q = manifest["quantization"]
    chosen = q["group_mode"]
    gates: list[Gate] = []
    unet_rows = q.get("variants", {}).get(chosen, [])
    deployed = getattr(target, "deployed_unet_runner", lambda *_: None)(folder, manifest)
    if deployed is not None and unet_rows:  # compiled engines: measure the UNet as it will run
        fp32_unet = OrtRunner(ctx.export_dir / ctx.export_manifest["components"]["unet"]["path"])
        unet_rows = unet_groups(fp32_unet, deployed, held_cap, q["groups"], "check unet (engine)")
    for row in unet_rows:
        gates.append(Gate("unet", "sqnr_db", row["index"], row["sqnr_db"], g.unet_sqnr_db))
        gates.append(Gate("unet", "cosine", row["index"], row["cosine"], g.unet_cosine))
    if "int8" in manifest["components"]["vae_decoder"].get("precision", ""):
        v = vae_psnr(
            OrtRunner(ctx.export_dir / ctx.export_manifest["components"]["vae_decoder"]["path"]),
            qpipe.runners["vae_decoder"],
            held_cap,
        )
        gates.append(Gate("vae_decoder", "psnr_db", None, v, g.vae_psnr_db))
    e2e, grid = report_mod.end_to_end(
        fpipe, qpipe, list(held_cap.settings.prompts), HELDOUT_SEED, tiny_sd=ctx.spec.calibration_data == "tiny-sd"
    )
    gates.append(Gate("pipeline", "psnr_db", None, e2e["psnr_db"], g.e2e_psnr_db))
    gates.append(Gate("pipeline", "ssim", None, e2e["ssim"], g.e2e_ssim))
    if "adherence" in e2e:
        for attr in ("colour", "shape"):
            drop = e2e["adherence_fp32"][attr] - e2e["adherence"][attr]
            gates.append(
                Gate("pipeline", f"adherence_{attr}_drop", None, drop, g.adherence_drop, higher_is_better=False)
            )
    for name, info in manifest["components"].items():
        if "rule_violations" in info:  # a target's structural rules (TensorRT's Q/DQ rules)
            n = info["rule_violations"]["count"]
            gates.append(
                Gate(name, f"{info['rule_violations']['rules']}_rule_violations", None, n, 0, higher_is_better=False)
            )
    passed = all(gates)
    timings = {**manifest.get("timings", {}), "check_e2e_s": round(time.time() - t0, 1)}
    rep = report_mod.Report(
        passed=passed,
        target=manifest["target"],
        model=manifest["model"]["name"],
        gates=[x.to_dict() for x in gates],
        unet_groups=unet_rows,
        e2e=e2e,
        group_mode=chosen,
        variants=q.get("variants", {}),
        timings=timings,
        quantized=manifest.get("quant_counts", {}),
        settings=q.get("settings", {}),
        usability={k: v["usability"] for k, v in manifest["components"].items() if "usability" in v},
        engines=manifest.get("engines_status", {}),
    )
    report_mod.write(folder, rep, grid)
    report_files = ["report.json", "report.md", "report.html", "grid.png", "sqnr_per_group.png"]
    manifest["artifacts"].update(artifact_table(folder, report_files))
    manifest.update(status="passed" if passed else "failed", gates=[x.to_dict() for x in gates], timings=timings)
    write_manifest(folder, manifest)
    return rep


_PATH_OPTS = ("out", "weights", "config_dir", "calib_prompts", "heldout_prompts", "cache_dir")


def _choose_mode(ctx: Context, unet: UnetVariants) -> str:
    if unet.per_group_dir is None:
        return "shared"
    if ctx.group_mode != "auto":
        return ctx.group_mode
    worst = {k: min(r["sqnr_db"] for r in rows) for k, rows in unet.metrics.items()}
    gain = worst["per-group"] - worst["shared"]
    return "per-group" if gain >= ctx.profile.calibration.auto_min_gain_db else "shared"


def _quant_counts(cals: dict[str, ComponentCalibration]) -> dict[str, dict[str, int]]:
    return {
        k: {
            "quantized": sum(d.quantized for d in c.decisions),
            "float": sum(not d.quantized for d in c.decisions),
            "activation_tensors": len(c.tensors),
        }
        for k, c in cals.items()
    }


def _settings(ctx: Context) -> dict[str, Any]:
    return {
        "groups": ctx.groups_n,
        "group_mode": ctx.group_mode,
        "grouping": ctx.grouping,
        "range_method": ctx.opts.range_method,
        "num_calib": len(ctx.prompts("calibration")),
        "num_heldout": len(ctx.prompts("heldout")),
        "seed": ctx.opts.seed,
        "profile": str(ctx.profile.path.name),
    }


def _manifest(
    ctx: Context, stage: Path, files: list[Path], comps: dict, unet_info: dict, chosen: str, status: str
) -> dict[str, Any]:
    base = ctx.export_manifest
    rel = [str(f.relative_to(stage)) for f in files]
    return {
        "kind": "int8",
        "target": ctx.profile.name,
        "status": status,
        "model": base["model"],
        "pipeline": base["pipeline"],
        "shapes": base["shapes"],
        "components": comps,
        "tokenizers": base["tokenizers"],
        "scheduler_config": base["scheduler_config"],
        "versions": library_versions(),
        "quantization": {"group_mode": chosen, **unet_info, "settings": _settings(ctx), "profile": ctx.profile.raw},
        "source_export": {"cache_key": base["cache_key"], "folder": str(ctx.export_dir.resolve())},
        "artifacts": artifact_table(stage, rel),
    }


__all__ = ["BuildOptions", "build", "check_folder", "prepare", "calibrate", "capture_set", "quantize_unet"]
