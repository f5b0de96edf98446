"""edgeq build: export -> capture -> statistics -> groups and ranges -> Q/DQ -> target -> checks -> report.

Each stage writes its result under the cache folder (``build/.cache/<model>-<weights hash>/`` by
default) keyed by everything that decides it, so a rerun reuses what has not changed. The build
folder itself is written under a temporary name and renamed when complete; a build that fails a
gate is kept, marked failed in its manifest, and the command exits non-zero.
"""

from __future__ import annotations

import copy
import gc
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
from edgeq.calibrate.histogram import RANGE_CHOICES, select_range, select_shared_range
from edgeq.errors import EdgeqError
from edgeq.fsutil import ensure_writable_dir, staged_dir, write_json
from edgeq.manifest import artifact_table, library_versions, read_manifest, write_manifest
from edgeq.models.weights import WeightSource, resolve
from edgeq.quantize.gains import GAINS_FILE
from edgeq.quantize.insert import QDQ_VERSION
from edgeq.quantize.policy import Decision, decide, summary, tensors_to_calibrate
from edgeq.quantize.profile import ComponentPolicy, Profile, load_profile
from edgeq.verify.checks import unet_groups

ROOT = Path(__file__).resolve().parents[1]
GROUP_MODES = ("shared", "per-group", "gains", "auto")
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
    calib_calls: int | None = None  # UNet calls the statistics use, spread over steps; None: the preset's
    goal_sqnr_db: float | None = None  # mixed precision: worst-group UNet SQNR to reach; None: the profile's
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

    @property
    def goal_sqnr_db(self) -> float | None:
        """Mixed-precision goal: the command line's, else the UNet policy's (None: off)."""
        return (
            self.opts.goal_sqnr_db if self.opts.goal_sqnr_db is not None else self.profile.policy("unet").goal_sqnr_db
        )

    @property
    def calib_calls(self) -> int | None:
        """How many captured UNet calls the statistics use (None: all)."""
        return self.opts.calib_calls if self.opts.calib_calls is not None else self.spec.calib_calls

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
        default = self.spec.num_calib if which == "calibration" else self.spec.num_heldout
        n = default if n is None else n
        if n < 1:
            raise EdgeqError(f"--num-{'calib' if which == 'calibration' else 'heldout'} must be at least 1, got {n}")
        return prompts[:n]


MIXED_CALLS = 80  # calibration calls the mixed-precision search evaluates (spread over steps and prompts)


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
    if opts.calib_calls is not None and opts.calib_calls < 1:
        raise EdgeqError(f"--calib-calls must be at least 1, got {opts.calib_calls}")
    if opts.range_method and opts.range_method not in RANGE_CHOICES:
        raise EdgeqError(f"--range-method {opts.range_method!r} is not one of {', '.join(RANGE_CHOICES)}")
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
    steps = ctx.export_manifest["pipeline"]["steps"]
    if ctx.calib_calls is not None and ctx.calib_calls < steps:
        raise EdgeqError(
            f"--calib-calls {ctx.calib_calls} is fewer than the {steps} denoising steps",
            f"give at least {steps}, so every step has statistics",
        )
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
    source: Path | None = None  # the graph the statistics ran on (SmoothQuant's copy, or the export)
    smoothing: dict | None = None  # what the SmoothQuant measurement chose, and why


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
        tensors = tensors_to_calibrate(graph, decisions, policy)
        limit = ctx.calib_calls if name == "unet" else None
        if limit is not None and limit >= len(cap):
            limit = None
        smoothing = None
        if name == "unet" and policy.smoothquant:
            path, smoothing = choose_smoothing(ctx, cap, policy, decisions, tensors, log)
        key = _key(str(cap.folder), tensors, ctx.export_manifest["cache_key"], limit, smoothing)
        stats_path = ctx.cache / f"stats-{name}-{key}.npz"
        t0 = time.time()
        if stats_path.is_file():
            stats = Stats.load(stats_path)
            log(f"reusing statistics {stats_path.name}")
        else:
            collect_isolated(path, tensors, cap, name, stats_path, limit)
            stats = Stats.load(stats_path)
        ctx.timings[f"statistics_{name}_s"] = round(time.time() - t0, 1)
        out[name] = ComponentCalibration(name, policy, decisions, tensors, stats, path, smoothing)
    return out


SMOOTH_CALLS = 40  # calibration calls each SmoothQuant candidate is calibrated and measured on


def choose_smoothing(
    ctx: Context, cap: Capture, policy: ComponentPolicy, decisions: list[Decision], tensors: list[str], log=print
) -> tuple[Path, dict]:
    """SmoothQuant off or one of the profile's alphas, whichever gives the best simulated worst group.

    Each candidate: the smoothed graph (cached), statistics on SMOOTH_CALLS calibration calls, shared
    ranges, and the all-quantized switchable graph's SQNR per group on the same calls. The choice
    (and every candidate's score) is cached and recorded in the quant plan.
    """
    import numpy as np
    import onnx

    from edgeq.quantize.sensitivity import Evaluator, switchable_model
    from edgeq.quantize.smooth import channel_absmax, sites, write_smoothed

    fp32 = ctx.export_dir / ctx.export_manifest["components"]["unet"]["path"]
    found = sites(onnx.load(str(fp32), load_external_data=False).graph, decisions)
    if not found:
        return fp32, {"alpha": None, "sites": 0, "reason": "no LayerNorm feeds only quantized linear layers"}
    key = _key("smooth-1", ctx.export_manifest["cache_key"], str(cap.folder), policy.smoothquant_alphas, SMOOTH_CALLS)
    choice_path = ctx.cache / f"smooth-unet-{key}.json"
    limit = min(SMOOTH_CALLS, len(cap))
    if not choice_path.is_file():
        t0 = time.time()
        calls = [s.feeds for s in cap.unet_samples(limit)]
        act_max = channel_absmax(fp32, [s.tensor for s in found], calls[:16])
        candidates: list[dict] = []
        for alpha in (None, *policy.smoothquant_alphas):
            path = fp32
            if alpha is not None:
                path = _smoothed_path(ctx, key, alpha)
                if not path.is_file():
                    write_smoothed(fp32, found, act_max, alpha, path.with_suffix(".tmp.onnx"))
                    _rename_model(path.with_suffix(".tmp.onnx"), path)
            stats_path = ctx.cache / f"stats-smooth-{key}-{alpha}.npz"
            if not stats_path.is_file():
                collect_isolated(path, tensors, cap, "unet", stats_path, limit)
            cal = ComponentCalibration("unet", policy, decisions, tensors, Stats.load(stats_path))
            groups = make_groups(ctx, cal.stats)
            _, shared = choose_ranges(cal, groups, _base_method(ctx.opts.range_method or policy.range_method))
            samples = unet_eval_samples(ctx, cap, [g.to_dict() for g in groups], limit)
            sw = switchable_model(path, decisions, policy)
            ev = Evaluator(sw, samples, [shared] * len(groups), policy.activation_symmetric, ctx.cache)
            sq = ev.sqnr(np.ones(len(sw.nodes), np.float32))
            candidates.append({"alpha": alpha, "worst_db": float(sq.min()), "mean_db": float(sq.mean())})
            log(f"smoothquant alpha {alpha}: worst group {sq.min():.2f} dB, mean {sq.mean():.2f} dB (simulated)")
        best = max(candidates, key=lambda c: c["worst_db"])
        write_json(
            choice_path,
            {
                "alpha": best["alpha"],
                "sites": len(found),
                "candidates": candidates,
                "seconds": round(time.time() - t0, 1),
                "reason": f"best simulated worst-group SQNR on {limit} calibration calls",
            },
        )
    choice = json.loads(choice_path.read_text())
    path = fp32 if choice["alpha"] is None else _smoothed_path(ctx, key, choice["alpha"])
    return path, choice


def _smoothed_path(ctx: Context, key: str, alpha: float) -> Path:
    return ctx.cache / f"smooth-unet-{key}-{alpha}" / "model.onnx"


def _rename_model(src: Path, dst: Path) -> None:
    """Move a model saved with its external data file beside it (``<name>_data``) to ``dst``."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    for init in model.graph.initializer:
        for e in init.external_data:
            if e.key == "location":
                e.value = dst.name + "_data"
    os.replace(src.parent / (src.name + "_data"), dst.parent / (dst.name + "_data"))
    onnx.save_model(model, str(dst))
    src.unlink()


def _collect_child(
    path: Path, tensors: list[str], cap: Capture, name: str, out: Path, err: Path, limit: int | None
) -> None:
    """Child process body of :func:`collect_isolated`."""
    try:
        if name == "unet":
            samples = ((s.step, s.feeds) for s in cap.unet_samples(limit))
            total = len(cap) if limit is None else limit
            stats = collect(path, tensors, samples, list(cap.timesteps), total, desc="statistics unet")
        else:
            samples = ((0, {"latent_sample": z}) for z in cap.vae_inputs())
            stats = collect(path, tensors, samples, [0.0], len(cap.settings.prompts), desc=f"statistics {name}")
        stats.save(out)
    except EdgeqError as e:
        err.write_text(json.dumps({"message": e.message, "hint": e.hint}))
        raise SystemExit(2) from None


def collect_isolated(
    path: Path, tensors: list[str], cap: Capture, name: str, out: Path, limit: int | None = None
) -> None:
    """Statistics of ``name`` into ``out``, collected in a child process (``limit``: UNet calls used).

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
            target=_collect_child, args=(path, tensors, cap, name, out, err, limit)
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


def choose_ranges(
    cal: ComponentCalibration, groups: list[Group], method: str, tensors: list[str] | None = None
) -> tuple[list[dict], dict]:
    """Per-group ranges and the one shared range of every tensor (or of ``tensors``)."""
    sym = cal.policy.activation_symmetric
    bits = 16 if "16" in cal.policy.activation_type else 8
    per_group: list[dict[str, tuple[float, float]]] = [{} for _ in groups]
    shared: dict[str, tuple[float, float]] = {}
    for t in cal.tensors if tensors is None else tensors:
        hists = [cal.stats.group(t, g.steps) for g in groups]
        for g, h in enumerate(hists):
            per_group[g][t] = tuple(float(v) for v in select_range(h, method, sym, bits=bits))
        shared[t] = tuple(
            float(v) for v in select_shared_range(hists, [len(g.steps) for g in groups], method, sym, bits)
        )
    return per_group, shared


def _base_method(method: str) -> str:
    """The fixed method ``auto`` starts from (and uses before the classes are measured)."""
    return "mse" if method == "auto" else method


def unet_ranges(
    ctx: Context,
    cal: ComponentCalibration,
    groups: list[Group],
    cap: Capture,
    fp32: Path,
    method: str,
    log=print,
    known: tuple[list[dict], dict] | None = None,
) -> tuple[list[dict], dict, dict | None]:
    """Per-group and shared ranges of every UNet tensor: by ``method`` (``known``: ranges already
    chosen by it, for the tensors they cover), or for ``auto`` by the method each tensor class
    measured best with (:mod:`edgeq.quantize.range_choice`, cached per inputs)."""
    if method != "auto":
        per_group, shared = known if known is not None else ([{} for _ in groups], {})
        missing = [t for t in cal.tensors if t not in shared]  # e.g. the split Convs' own outputs
        if missing:
            extra_g, extra = choose_ranges(cal, groups, method, missing)
            shared = shared | extra
            per_group = [r | e for r, e in zip(per_group, extra_g)]
        return per_group, shared, None
    import numpy as np
    import onnx

    from edgeq.quantize.range_choice import CANDIDATES, RangeChoice, choose, tensor_classes
    from edgeq.quantize.sensitivity import Evaluator, switchable_model

    default = _base_method(method)
    by_method = {m: choose_ranges(cal, groups, m) for m in CANDIDATES}
    gd = [g.to_dict() for g in groups]
    key = _key(
        "ranges-2",
        ctx.export_manifest["cache_key"],
        asdict(cal.policy),
        gd,
        [asdict(d) for d in cal.decisions],
        str(cap.folder),
        MIXED_CALLS,
        str(fp32),
        cal.tensors,
    )
    path = ctx.cache / f"ranges-unet-{key}.json"
    t0 = time.time()
    if not path.is_file():
        classes = tensor_classes(onnx.load(str(fp32), load_external_data=False).graph, cal.tensors, cal.decisions)
        sw = switchable_model(fp32, cal.decisions, cal.policy)
        samples = unet_eval_samples(ctx, cap, gd, MIXED_CALLS)
        ev = Evaluator(sw, samples, [by_method[default][1]] * len(groups), cal.policy.activation_symmetric, ctx.cache)
        gates = np.ones(len(sw.nodes), np.float32)

        def worst(ranges: dict) -> float:
            ev.set_ranges([ranges] * len(groups))
            return float(ev.sqnr(gates).min())

        log(f"range method per tensor class: {len(set(classes.values()))} classes on {len(samples)} calibration calls")
        choice = choose(classes, {m: by_method[m][1] for m in CANDIDATES}, worst, default, log)
        choice.calls = len(samples)
        write_json(path, choice.to_dict() | {"seconds": round(time.time() - t0, 1)})
    choice = RangeChoice.from_dict(json.loads(path.read_text()))
    ctx.timings["range_choice_s"] = round(time.time() - t0, 1)
    per_group = [{t: by_method[choice.method_of(t)][0][g][t] for t in cal.tensors} for g in range(len(groups))]
    shared = {t: by_method[choice.method_of(t)][1][t] for t in cal.tensors}
    return per_group, shared, choice.to_dict()


@dataclass
class UnetVariants:
    """The UNet quantized both ways, so the report can show what grouping gains."""

    groups: list[Group]
    shared_dir: Path
    per_group_dir: Path | None
    plan: dict[str, Any]
    metrics: dict[str, list[dict]] = field(default_factory=dict)
    gains_dir: Path | None = None  # one graph, per-group scales through edgeq_gains (edgeq.quantize.gains)


def unet_source(ctx: Context, cal: ComponentCalibration, shared: dict, cap: Capture) -> tuple[Path, list]:
    """The UNet graph to quantize: the FP32 export, or its shortcut-split copy (cached) where the
    profile splits Concat-fed Convs; ``cal.decisions`` then name the split Convs. Where the profile
    quantizes outputs, the split Convs' outputs get statistics of their own (one call per step, or
    the calibration budget), added to ``cal``."""
    import onnx

    from edgeq.quantize.split import plan_splits, split_decisions, write_split

    fp32 = cal.source or ctx.export_dir / ctx.export_manifest["components"]["unet"]["path"]
    if not cal.policy.split_concat_convs:
        return fp32, []
    graph = onnx.load(str(fp32), load_external_data=False).graph
    splits = plan_splits(graph, cal.decisions, shared, cal.policy.split_min_ratio)
    if not splits:
        return fp32, []
    root = ctx.cache / f"split-unet-{_key('split-1', str(fp32), [s.to_dict() for s in splits])}"
    if not (root / "done").is_file():
        shutil.rmtree(root, ignore_errors=True)
        write_split(fp32, splits, root / "model.onnx")
        (root / "done").write_text("ok\n")
    cal.decisions = split_decisions(cal.decisions, splits)
    if cal.policy.output_quantization:
        new = [f"{o}/split{k}" for o, s in _split_outputs(graph, splits) for k in range(len(s.inputs))]
        limit = min(ctx.calib_calls or len(cap), len(cap))
        stats_path = root / f"stats-{_key(str(cap.folder), new, limit)}.npz"
        if not stats_path.is_file():
            collect_isolated(root / "model.onnx", new, cap, "unet", stats_path, None if limit >= len(cap) else limit)
        extra = Stats.load(stats_path)
        cal.stats.hists.update(extra.hists)
        cal.stats.tensors += [t for t in new if t not in cal.stats.tensors]
        cal.tensors = cal.tensors + [t for t in new if t not in cal.tensors]
    return root / "model.onnx", splits


def _split_outputs(graph, splits: list) -> list:
    """(original Conv output, split) for each split."""
    out_of = {n.name: n.output[0] for n in graph.node}
    return [(out_of[s.conv], s) for s in splits]


def unet_eval_samples(ctx: Context, cap: Capture, groups: list[Group], limit: int | None) -> list:
    """Captured UNet calls with their FP32 outputs and timestep group, for the sensitivity evaluator."""
    from edgeq.calibrate.grouping import group_for
    from edgeq.quantize.sensitivity import EvalSample
    from edgeq.runtime.sessions import OrtRunner

    fp32 = None
    out = []
    for s in cap.unet_samples(limit if limit is not None and limit < len(cap) else None):
        ref = s.reference
        if ref is None:  # a capture made before outputs were recorded
            fp32 = fp32 or OrtRunner(ctx.export_dir / ctx.export_manifest["components"]["unet"]["path"])
            ref = fp32.run(s.feeds)["out_sample"]
        out.append(EvalSample(s.feeds, ref, group_for(groups, s.timestep)))
    return out


def unet_macs(ctx: Context, cal: ComponentCalibration, cap: Capture, fp32: Path) -> tuple[dict[str, int], set[str]]:
    """MACs of every candidate node of ``fp32`` for one captured call, and the activation-by-activation
    MatMuls. Cached: counting runs the FP32 UNet with every node's output (10.9 GB at SD1.5 size), and
    the mixed-precision search, the quant plan and ``edgeq sensitivity`` all ask."""
    import onnx

    from edgeq.quantize.policy import _constant_names
    from edgeq.quantize.sensitivity import count_macs

    nodes = [d.node for d in cal.decisions]
    path = ctx.cache / f"macs-unet-{_key('macs-1', str(fp32), nodes, str(cap.folder))}.json"
    if not path.is_file():
        g = onnx.load(str(fp32), load_external_data=False).graph
        const = _constant_names(g)
        act_act = sorted(n.name for n in g.node if n.op_type == "MatMul" and n.input[1] not in const)
        feeds = next(iter(cap.unet_samples(len(cap.timesteps)))).feeds
        write_json(path, {"macs": count_macs(fp32, feeds, nodes), "activation_matmuls": act_act})
    res = json.loads(path.read_text())
    return res["macs"], set(res["activation_matmuls"])


def float_shares(decisions: list[Decision], macs: dict[str, int], act_act: set[str]) -> dict[str, Any]:
    """Share of the weight layers' MACs left float, and the attention MatMuls apart."""
    weight = {d.node: macs.get(d.node, 0) for d in decisions if d.node not in act_act}
    total = max(sum(weight.values()), 1)
    att = [d for d in decisions if d.node in act_act]
    return {
        "weight_layer_macs": sum(weight.values()),
        "float_share": sum(v for d in decisions if d.node in weight and not d.quantized for v in [weight[d.node]])
        / total,
        "attention_matmul_macs": sum(macs.get(d.node, 0) for d in att),
        "attention_matmuls_float": sum(1 for d in att if not d.quantized),
        "attention_matmuls": len(att),
    }


def mixed_precision(
    ctx: Context, cal: ComponentCalibration, groups: list[Group], shared: dict, cap: Capture, fp32: Path, log=print
) -> tuple[list[Decision], dict]:
    """Leave float the fewest nodes that bring the worst group to the goal (cached per inputs).

    Searched on calibration calls with the shared ranges (the harder case: per-group ranges only
    do better), then measured for real by the build's checks on held-out prompts.
    """
    from edgeq.quantize.sensitivity import Evaluator, search, switchable_model

    goal = ctx.goal_sqnr_db
    key = _key(
        "mixed-2",
        ctx.export_manifest["cache_key"],
        asdict(cal.policy),
        goal,
        shared,
        [g.to_dict() for g in groups],
        [asdict(d) for d in cal.decisions],
        str(cap.folder),
        MIXED_CALLS,
        str(fp32),
    )
    path = ctx.cache / f"mixed-unet-{key}.json"
    t0 = time.time()
    if path.is_file():
        res = json.loads(path.read_text())
        log(f"reusing the mixed-precision search {path.name}")
    else:
        macs, act_act = unet_macs(ctx, cal, cap, fp32)
        base = float_shares(cal.decisions, macs, act_act)
        weight_total = max(base["weight_layer_macs"], 1)
        share = {n: (0.0 if n in act_act else v / weight_total) for n, v in macs.items()}
        sw = switchable_model(fp32, cal.decisions, cal.policy)
        samples = unet_eval_samples(ctx, cap, [g.to_dict() for g in groups], MIXED_CALLS)
        ev = Evaluator(sw, samples, [shared] * len(groups), cal.policy.activation_symmetric, ctx.cache)
        aim = goal + cal.policy.goal_margin_db
        log(f"mixed precision: goal worst-group SQNR >= {goal} dB (searching to {aim:g}) on {len(samples)} calls")
        mp = search(ev, sw, share, aim, cal.policy.max_float_mac_share, base_share=base["float_share"], log=log)
        res = mp.to_dict() | {
            "goal_db": goal,
            "searched_to_db": aim,
            "macs": macs,
            "activation_matmuls": sorted(act_act),
            "profile_float_share": base["float_share"],
        }
        write_json(path, res)
    ctx.timings["mixed_precision_s"] = round(time.time() - t0, 1)
    chosen = {f["node"]: f for f in res["float_nodes"]}
    decisions = [
        replace(
            d,
            quantized=False,
            reason=(
                f"sensitivity: left float to reach worst-group SQNR >= {goal:g} dB; its float copy gained "
                f"{chosen[d.node]['gain_db']:.2f} dB; {100 * chosen[d.node]['mac_share']:.2f}% of weight-layer MACs"
            ),
        )
        if d.node in chosen
        else d
        for d in cal.decisions
    ]
    return decisions, res


def sensitivity_analysis(
    opts: BuildOptions, calls: int = 80, out: Path | None = None, log=print
) -> tuple[dict[str, Any], Path]:
    """``edgeq sensitivity``: every UNet candidate node quantized alone and left float alone.

    Measured on held-out captured calls with the ranges the build would deploy (per-group ranges
    for ``--group-mode per-group``, else the shared ones). With a goal (``--goal-sqnr`` or the
    profile's), also the mixed-precision search and its trade-off curve. Writes sensitivity.json,
    sensitivity.md, sensitivity.png (and tradeoff.png) into ``out``.
    """
    from edgeq.quantize.sensitivity import Evaluator, measure, search, switchable_model
    from edgeq.verify.report import _png, sensitivity_plot, tradeoff_plot

    if calls < 1:
        raise EdgeqError(f"--calls must be at least 1, got {calls}")
    ctx = prepare(opts, log)
    cal_cap = capture_set(ctx, "calibration")
    cal = calibrate(ctx, cal_cap, log)["unet"]
    if cal.policy.mode != "int8" or not any(d.quantized for d in cal.decisions):
        raise EdgeqError(
            f"target {ctx.profile.name} quantizes no UNet node: nothing to rank", 'set [unet] mode = "int8"'
        )
    out = out or Path("build") / f"{ctx.spec.name.strip('./').replace('/', '_')}-{ctx.profile.name}-sensitivity"
    method = ctx.opts.range_method or cal.policy.range_method
    groups = make_groups(ctx, cal.stats)
    known = choose_ranges(cal, groups, _base_method(method))
    held = capture_set(ctx, "heldout")
    gd = [g.to_dict() for g in groups]
    samples = unet_eval_samples(ctx, held, gd, max(calls, len(held.timesteps)))
    fp32, splits = unet_source(ctx, cal, known[1], cal_cap)
    per_group, shared, _ = unet_ranges(ctx, cal, groups, cal_cap, fp32, method, log, known)
    ranges = per_group if ctx.group_mode == "per-group" else [shared] * len(groups)
    macs, act_act = unet_macs(ctx, cal, cal_cap, fp32)
    t0 = time.time()
    sw = switchable_model(fp32, cal.decisions, cal.policy)
    ev = Evaluator(sw, samples, ranges, cal.policy.activation_symmetric, ctx.cache)
    base, rows = measure(ev, cal.decisions, macs, act_act)
    shares = float_shares(cal.decisions, macs, act_act)
    res: dict[str, Any] = {
        "model": ctx.spec.name,
        "target": ctx.profile.name,
        "ranges": "per-group" if ctx.group_mode == "per-group" else "shared",
        "groups": gd,
        "calls": len(samples),
        "baseline_db": [float(v) for v in base],
        "float_macs": shares,
        "nodes": [r.to_dict() for r in rows],
        "profile_exclusions": [asdict(d) for d in cal.decisions if not d.quantized],
        "splits": [x.to_dict() for x in splits],
    }
    goal = ctx.goal_sqnr_db
    if goal is not None:
        share = {r.node: r.mac_share for r in rows}
        mp = search(ev, sw, share, goal, cal.policy.max_float_mac_share, base_share=shares["float_share"], log=log)
        res["mixed_precision"] = mp.to_dict()
    res["seconds"] = round(time.time() - t0, 1)
    res["evaluated_calls"] = ev.calls
    with staged_dir(out) as stage:
        write_json(stage / "sensitivity.json", res)
        (stage / "sensitivity.png").write_bytes(_png(sensitivity_plot(res["nodes"])))
        if goal is not None:
            (stage / "tradeoff.png").write_bytes(_png(tradeoff_plot(res["mixed_precision"]["curve"], goal)))
        (stage / "sensitivity.md").write_text(_sensitivity_markdown(res))
    return res, out


def _sensitivity_markdown(res: dict[str, Any]) -> str:
    g = res["groups"]
    lines = [
        f"# UNet sensitivity: {res['model']} -> {res['target']}",
        "",
        f"{res['calls']} held-out UNet calls, {res['ranges']} ranges, {len(res['nodes'])} candidate nodes. "
        "All quantized: " + ", ".join(f"group {x['index']} {v:.2f} dB" for x, v in zip(g, res["baseline_db"])) + ".",
        "",
        "*float gain*: worst-group SQNR gained when only this node is left float (the others quantized). "
        "*alone*: per-group SQNR with only this node quantized. MACs %: of the weight layers' MACs; "
        "attention score/value MatMuls (activation x activation) are marked *attn* and counted apart.",
        "",
        "| rank | node | op | MACs % | float gain dB | alone dB per group |",
        "|---|---|---|---|---|---|",
    ]
    for k, r in enumerate(res["nodes"], 1):
        share = "attn" if r["activation_matmul"] else f"{100 * r['mac_share']:.2f}"
        alone = " / ".join(f"{v:.1f}" for v in r["alone_db"])
        lines.append(f"| {k} | {r['node']} | {r['op_type']} | {share} | {r['float_gain_db']:.2f} | {alone} |")
    lines += ["", "![sensitivity](sensitivity.png)", ""]
    mp = res.get("mixed_precision")
    if mp:
        lines += [
            f"## Mixed precision to worst group >= {mp['goal_db']:g} dB: {'met' if mp['met'] else 'not met'}",
            "",
            "| float share % | worst dB | mean dB | nodes float |",
            "|---|---|---|---|",
            *(
                f"| {100 * c['float_share']:.2f} | {c['worst_db']:.2f} | {c['mean_db']:.2f} | {c['nodes_float']} |"
                for c in mp["curve"]
            ),
            "",
            "![trade-off](tradeoff.png)",
            "",
        ]
    return "\n".join(lines)


def quantize_unet(ctx: Context, cal: ComponentCalibration, cap: Capture, log=print) -> UnetVariants:
    import onnx

    from edgeq.quantize.insert import (
        quantize_graph,
        read_activation_qparams,
        save_group_graphs,
        weight_summary,
    )

    method = ctx.opts.range_method or cal.policy.range_method
    groups = make_groups(ctx, cal.stats)
    known = choose_ranges(cal, groups, _base_method(method))
    fp32, splits = unet_source(ctx, cal, known[1], cap)
    per_group, shared, range_choice = unet_ranges(ctx, cal, groups, cap, fp32, method, log, known)
    mixed = None
    if ctx.goal_sqnr_db is not None:
        cal.decisions, mixed = mixed_precision(ctx, cal, groups, shared, cap, fp32, log)
    key = _key(
        QDQ_VERSION,
        ctx.export_manifest["cache_key"],
        asdict(cal.policy),
        method,
        [g.to_dict() for g in groups],
        shared,
        per_group,
        [asdict(d) for d in cal.decisions],
        str(fp32),
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
        "float_macs": float_shares(cal.decisions, *unet_macs(ctx, cal, cap, fp32)),
        "mixed_precision": mixed,
        "splits": [x.to_dict() for x in splits],
        "smoothquant": cal.smoothing,
        "range_choice": range_choice,
        "quantized_nodes": [d.node for d in cal.decisions if d.quantized],
        "excluded_nodes": [
            {"node": d.node, "op_type": d.op_type, "reason": d.reason} for d in cal.decisions if not d.quantized
        ],
    }
    per_dir = root / "per-group" if len(groups) > 1 else None
    gains_dir = None
    c = ctx.profile.calibration
    if per_dir is not None and (
        ctx.group_mode == "gains" or (ctx.group_mode == "auto" and c.group_gains and c.auto_gains)
    ):
        gains_dir = root / "gains"
        if not (gains_dir / "done").is_file():
            write_gains_graph(
                shared_model, cal.tensors, per_group, cal.policy, [g.to_dict() for g in groups], gains_dir
            )
        plan["gains"] = {"graph": "gains/model.onnx", **json.loads((gains_dir / GAINS_FILE).read_text())}
    return UnetVariants(groups, root / "shared", per_dir, plan, gains_dir=gains_dir)


def write_gains_graph(
    shared_model, tensors: list[str], per_group: list[dict], policy: ComponentPolicy, groups: list[dict], dst: Path
) -> None:
    """The shared Q/DQ graph with group gains, and its ``gains.json`` (cached beside the other variants)."""
    from edgeq.fsutil import save_onnx
    from edgeq.quantize.gains import add_gains, gain_table
    from edgeq.quantize.insert import read_activation_qparams

    fixed = read_activation_qparams(shared_model, tensors)
    gains = gain_table(fixed, per_group, policy.activation_type, policy.activation_symmetric, groups)
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    save_onnx(add_gains(copy.deepcopy(shared_model), gains.tensors), dst / "model.onnx")
    write_json(dst / GAINS_FILE, gains.to_dict())
    (dst / "done").write_text("ok\n")


def quantize_single(ctx: Context, cal: ComponentCalibration) -> tuple[Path, dict]:
    """A component calibrated as one group (the VAE decoder)."""
    import onnx

    from edgeq.quantize.insert import quantize_graph, read_activation_qparams, weight_summary

    method = ctx.opts.range_method or cal.policy.range_method
    if method == "auto":  # measured per tensor class on the UNet only; here the profile's fixed method
        method = _base_method(cal.policy.range_method)
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
    from edgeq.runtime.sessions import LazyRunner
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
    unet = quantize_unet(ctx, cals["unet"], cal_cap, log) if cals["unet"].policy.mode == "int8" else None
    vae_cal = cals.get("vae_decoder")
    vae_dir, vae_plan = quantize_single(ctx, vae_cal) if vae_cal and vae_cal.policy.mode == "int8" else (None, None)
    unet_info: dict[str, Any] = {}
    chosen = "float"
    if unet is not None:
        groups = [x.to_dict() for x in unet.groups]
        t0 = time.time()
        fp32_unet = LazyRunner(ctx.export_dir / ctx.export_manifest["components"]["unet"]["path"])
        runner = None
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
        if unet.gains_dir is not None:
            from edgeq.runtime.sessions import GainsRunner

            runner = GainsRunner(
                target.unet_runner(ctx, [(unet.gains_dir / "model.onnx", groups[0])]), unet.plan["gains"]
            )
            unet.metrics["gains"] = unet_groups(fp32_unet, runner, held_cap, groups, "check unet (gains)")
        del fp32_unet, runner  # a full-size UNet session holds gigabytes; the packaging and checks follow
        gc.collect()
        ctx.timings["check_unet_s"] = round(time.time() - t0, 1)
        chosen = _choose_mode(ctx, unet)
        mp = unet.plan["mixed_precision"]
        rc = unet.plan["range_choice"]
        unet_info = {
            "mode": chosen,
            "groups": groups,
            "variants": unet.metrics,
            "precision": {
                "float_macs": unet.plan["float_macs"],
                "mixed_precision": {k: v for k, v in mp.items() if k != "macs"} if mp else None,
                "range_choice": {k: v for k, v in rc.items() if k != "classes"} if rc else None,
            },
        }
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
    from edgeq.runtime.sessions import LazyRunner, OrtRunner
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
    # FP32 images come from the held-out capture's final latents: only the FP32 VAE decoder is needed
    fp32_vae = OrtRunner(ctx.export_dir / ctx.export_manifest["components"]["vae_decoder"]["path"])
    g = ctx.profile.gates
    q = manifest["quantization"]
    chosen = q["group_mode"]
    gates: list[Gate] = []
    unet_rows = q.get("variants", {}).get(chosen, [])
    deployed = getattr(target, "deployed_unet_runner", lambda *_: None)(folder, manifest)
    if deployed is not None and unet_rows:  # compiled engines: measure the UNet as it will run
        fp32_unet = LazyRunner(ctx.export_dir / ctx.export_manifest["components"]["unet"]["path"])
        unet_rows = unet_groups(fp32_unet, deployed, held_cap, q["groups"], "check unet (engine)")
    for row in unet_rows:
        gates.append(Gate("unet", "sqnr_db", row["index"], row["sqnr_db"], g.unet_sqnr_db))
        gates.append(Gate("unet", "cosine", row["index"], row["cosine"], g.unet_cosine))
    if "int8" in manifest["components"]["vae_decoder"].get("precision", ""):
        v = vae_psnr(
            fp32_vae,
            qpipe.runners["vae_decoder"],
            held_cap,
        )
        gates.append(Gate("vae_decoder", "psnr_db", None, v, g.vae_psnr_db))
    e2e, grid = report_mod.end_to_end(
        fp32_vae,
        qpipe,
        list(held_cap.settings.prompts),
        HELDOUT_SEED,
        tiny_sd=ctx.spec.calibration_data == "tiny-sd",
        reference=list(held_cap.vae_inputs()),  # the held-out capture is the FP32 pipeline's run
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
        precision=q.get("precision", {}),
    )
    report_mod.write(folder, rep, grid)
    report_files = ["report.json", "report.md", "report.html", "grid.png", "sqnr_per_group.png"]
    report_files += [f for f in ("tradeoff.png",) if (folder / f).is_file()]
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
    cal = ctx.profile.calibration
    worst = {k: min(r["sqnr_db"] for r in rows) for k, rows in unet.metrics.items()}  # gains: built if allowed
    if max(worst.values()) - worst["shared"] < cal.auto_min_gain_db:
        return "shared"  # grouping does not pay for itself
    if "gains" in worst and worst["gains"] >= worst["per-group"] - cal.gains_tolerance_db:
        return "gains"  # one graph and one set of weights, within the tolerance of per-group graphs
    return "per-group"


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
