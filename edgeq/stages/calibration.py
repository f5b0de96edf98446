"""Capture and statistics: the calibration trajectories, and per-step histograms per component.

Capture runs the FP32 pipeline over the plan's prompts (cached per settings, resumable per
prompt shard). Statistics stream every captured call through ONNX Runtime in a child process and
keep one histogram per tensor and step (:mod:`edgeq.calibrate.collect`); the result is a frozen
:class:`ComponentStats` per component.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edgeq.calibrate.capture import Capture, CaptureSettings, capture
from edgeq.calibrate.collect import Stats, collect
from edgeq.errors import EdgeqError
from edgeq.quantize.policy import Decision, decide, tensors_to_calibrate
from edgeq.stages.config import HELDOUT_SEED
from edgeq.stages.context import Context

COMPONENTS = ("unet", "vae_decoder", "text_encoder")


def capture_set(ctx: Context, which: str) -> Capture:
    """The calibration or held-out trajectories (``which``), captured once per settings."""
    p = ctx.pipeline  # the schedule the deployable will run, not the export's default
    seed = ctx.plan.seed if which == "calibration" else HELDOUT_SEED
    steps = p["steps"]
    settings = CaptureSettings(
        tuple(ctx.prompts(which)), seed, steps, p["guidance"], p["scheduler"], source=ctx.export.key
    )
    folder = ctx.stages.path(f"capture-{which}", asdict(settings))
    req, dst = capture_stats_request(ctx, folder, settings) if which == "calibration" else (None, None)
    folding = req is not None and bool(req.chosen)
    cached = dst is not None and dst.is_file()
    with ctx.stages.timed(f"capture_{which}_s"):
        cap = capture(
            ctx.export.folder,
            folder,
            settings,
            f"capture {which}",
            ctx.cluster,
            on_first=(lambda s: ctx.stages.log(build_estimate(ctx, s, steps, folding, cached)))
            if which == "calibration"
            else None,
            stats=req,
        )
    if req is not None and req.result is not None and dst is not None:
        tmp = dst.with_name(f".{dst.stem}.partial{dst.suffix}")
        req.result.save(tmp)
        tmp.replace(dst)
        ctx.stages.log(f"statistics unet: {len(req.chosen)} calls collected during the capture")
    return cap


def max_bytes(ctx: Context) -> int | None:
    """The statistics' memory ceiling in bytes (``--max-memory``; None: what the system has free)."""
    return None if ctx.plan.max_memory_gb is None else int(ctx.plan.max_memory_gb * 2**30)


def unet_stats_key(ctx: Context, folder: Path, n_calls: int, tensors: tuple[str, ...]) -> tuple:
    """The inputs the UNet statistics file is cached by (``n_calls``: calls the capture holds)."""
    limit = ctx.plan.calib_calls
    if limit is not None and limit >= n_calls:
        limit = None
    return (str(folder), tensors, ctx.export.key, limit, None), limit


def capture_stats_request(ctx: Context, folder: Path, settings: CaptureSettings):
    """How the calibration capture runs its UNet, and the statistics file it may fill: (request, file)
    or (None, None). Where the profile quantizes the UNet on the exported graph (no SmoothQuant copy),
    the capture runs it as the statistics' augmented graph, one batch item at a time, on one machine
    or a cluster alike (the same trajectories whichever way); and, unless the statistics are cached,
    it folds the calls they use into their histograms as it goes (no second FP32 pass over them)."""
    import onnx

    from edgeq.calibrate.capture import Capture, _timesteps
    from edgeq.calibrate.collect import StatsRequest

    policy = ctx.profile.policy("unet")
    if policy.mode != "int8" or policy.smoothquant or not ctx.export.has("unet"):
        return None, None
    path = ctx.export.path("unet")
    graph = onnx.load(str(path), load_external_data=False).graph
    tensors = tuple(tensors_to_calibrate(graph, list(decide(graph, policy)), policy))
    n_steps = len(_timesteps(ctx.export.folder, settings))
    key, limit = unet_stats_key(ctx, folder, len(settings.prompts) * n_steps, tensors)
    dst = ctx.stages.path("stats-unet", *key, suffix=".npz")
    chosen = set() if dst.is_file() else set(Capture(folder, settings, tuple(range(n_steps))).calls(limit))
    return StatsRequest(path, list(tensors), chosen, max_bytes(ctx)), dst


# statistics run the UNet with every calibrated activation as an extra output: slower than a plain call
STATISTICS_CALL_FACTOR = 1.5


def build_estimate(
    ctx: Context, call: float, steps: int, stats_in_capture: bool = False, stats_cached: bool = False
) -> str:
    """What the build's UNet calls will cost, from the first FP32 UNet call of the calibration capture
    (``call`` seconds; printed right after it, before the first prompt is done): each stage's calls
    times that call's time, with the option that sets the count. The first call carries the session's
    warm-up and INT8 calls are counted at the FP32 call's time, so the estimate errs long; cached
    stages are skipped; fixed costs (session loads, Q/DQ insertion, packaging) come on top, which at
    full size are small beside the calls. ``stats_cached``: the UNet statistics are cached (no row)."""
    from edgeq.progress import duration

    p = ctx.plan
    stat_calls = p.calib_calls or p.num_calib * steps
    variants = 1 if p.groups == 1 or p.group_mode == "shared" else 3
    rows = [
        ("capture", (p.num_calib + p.num_heldout) * steps * call, "--num-calib, --num-heldout"),
        (
            "statistics" + (" (during the capture)" if stats_in_capture else ""),
            stat_calls * call * (STATISTICS_CALL_FACTOR - 1 if stats_in_capture else STATISTICS_CALL_FACTOR),
            "--calib-calls",
        ),
        ("UNet checks", p.num_heldout * steps * variants * call, "--num-heldout, --group-mode"),
        ("end-to-end checks", p.num_heldout * steps * call, "--num-heldout"),
    ]
    if stats_cached:
        rows.pop(1)
    total = sum(r[1] for r in rows)
    parts = "; ".join(f"{name} ~{duration(s)} ({knob})" for name, s, knob in rows)
    return (
        f"build estimate from the first FP32 UNet call ({call:.2f} s per call): "
        f"UNet calls about {duration(total)} in all: {parts}; cached stages are skipped, fixed costs come on top"
    )


@dataclass(frozen=True)
class ComponentStats:
    """One component's quantization candidates and the statistics of the tensors they read."""

    name: str
    policy: Any  # edgeq.profiles.ComponentPolicy
    decisions: tuple[Decision, ...]
    tensors: tuple[str, ...]
    stats: Stats
    source: Path | None = None  # the graph the statistics ran on (SmoothQuant's copy, or the export)
    smoothing: dict | None = None  # what the SmoothQuant measurement chose, and why
    stats_file: Path | None = None  # where ``stats`` is cached (None: not saved, e.g. a float component)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the histograms themselves, which live in ``stats_file``."""
        return {
            "name": self.name,
            "policy": asdict(self.policy),
            "decisions": [asdict(d) for d in self.decisions],
            "tensors": list(self.tensors),
            "stats_file": None if self.stats_file is None else str(self.stats_file),
            "source": None if self.source is None else str(self.source),
            "smoothing": self.smoothing,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ComponentStats:
        from edgeq.profiles.schema import ComponentPolicy, Where, validate

        policy = validate(ComponentPolicy, d["policy"], Where("stage record", d["name"]))
        stats = Stats.load(Path(d["stats_file"])) if d["stats_file"] else Stats([], [])
        return cls(
            d["name"],
            policy,
            tuple(Decision(**x) for x in d["decisions"]),
            tuple(d["tensors"]),
            stats,
            Path(d["source"]) if d["source"] else None,
            d["smoothing"],
            Path(d["stats_file"]) if d["stats_file"] else None,
        )

    @property
    def quantized(self) -> bool:
        return self.policy.mode == "int8"

    def with_extra(self, extra: Stats) -> ComponentStats:
        """The same component with statistics of more tensors (the split Convs' own outputs)."""
        new = [t for t in extra.tensors if t not in self.stats.tensors]
        stats = Stats(self.stats.tensors + new, self.stats.timesteps, {**self.stats.hists, **extra.hists})
        tensors = self.tensors + tuple(t for t in extra.tensors if t not in self.tensors)
        return replace(self, stats=stats, tensors=tensors, stats_file=None)  # merged in memory, no one file


def calibrate(ctx: Context, cap: Capture, log=print) -> dict[str, ComponentStats]:
    """Streaming statistics for every component the profile quantizes (UNet per step, VAE once)."""
    import onnx

    from edgeq.stages.smoothing import choose_smoothing

    out = {}
    for name in COMPONENTS:
        policy = ctx.profile.policy(name)
        if not ctx.export.has(name):
            continue
        path = ctx.export.path(name)
        graph = onnx.load(str(path), load_external_data=False).graph
        decisions = tuple(decide(graph, policy))
        if policy.mode != "int8":
            out[name] = ComponentStats(name, policy, decisions, (), Stats([], []))
            continue
        if name == "text_encoder":
            raise EdgeqError("quantizing the text encoder is not supported yet", 'set [text_encoder] mode = "float"')
        tensors = tuple(tensors_to_calibrate(graph, list(decisions), policy))
        key, limit = unet_stats_key(ctx, cap.folder, len(cap), tensors)
        if name != "unet":
            limit = None
        smoothing = None
        if name == "unet" and policy.smoothquant:
            path, smoothing = choose_smoothing(ctx, cap, policy, decisions, tensors, log)
        with ctx.stages.timed(f"statistics_{name}_s"):
            stats_path = ctx.stages.file(
                f"stats-{name}",
                *key[:3],
                limit,
                smoothing,
                suffix=".npz",
                what="statistics",
                make=lambda tmp, path=path, name=name, tensors=tensors, limit=limit: collect_stats(
                    ctx, path, list(tensors), cap, name, tmp, limit
                ),
            )
            stats = Stats.load(stats_path)
        out[name] = ComponentStats(name, policy, decisions, tensors, stats, path, smoothing, stats_path)
    return out


def _collect_to_file(
    path: Path, tensors: list[str], cap: Capture, name: str, out: Path, limit: int | None, max_bytes: int | None
) -> None:
    """Child process body of :func:`collect_isolated`."""
    if name == "unet":
        total = len(cap) if limit is None else limit
        stats = collect(
            path,
            tensors,
            lambda: ((s.step, s.feeds) for s in cap.unet_samples(limit)),
            list(cap.timesteps),
            total,
            desc="statistics unet",
            max_bytes=max_bytes,
        )
    else:
        stats = collect(
            path,
            tensors,
            lambda: ((0, {"latent_sample": z}) for z in cap.vae_inputs()),
            [0.0],
            len(cap.settings.prompts),
            desc=f"statistics {name}",
            max_bytes=max_bytes,
        )
    stats.save(out)


def collect_stats(
    ctx: Context, path: Path, tensors: list[str], cap: Capture, name: str, out: Path, limit: int | None = None
) -> None:
    """Statistics into ``out``: on the build's Ray cluster where it has one, else in a child process.
    Both give the same file contents (histograms merge exactly in any order)."""
    if ctx.cluster is None:
        collect_isolated(path, tensors, cap, name, out, limit, max_bytes(ctx))
    else:
        ctx.cluster.statistics(path, tensors, cap, name, limit, f"statistics {name}").save(out)


def collect_isolated(
    path: Path,
    tensors: list[str],
    cap: Capture,
    name: str,
    out: Path,
    limit: int | None = None,
    max_bytes: int | None = None,
) -> None:
    """Statistics of ``name`` into ``out``, collected in a child process (``limit``: UNet calls used;
    ``max_bytes``: the child's memory ceiling, None: what the system has free, see
    :func:`edgeq.calibrate.collect.plan_parts`).

    ONNX Runtime's session for the augmented graph holds the weights plus every requested activation
    of one call (7.4 GB on the SD1.5 UNet). In one process that memory is not all given back, and
    Q/DQ insertion (4.2 GB alone) stacked on it: 8.5 GB. A child returns it to the system, so a build's
    peak is the larger of the two stages, not their sum.
    """
    from edgeq.isolate import run_isolated

    out.parent.mkdir(parents=True, exist_ok=True)
    run_isolated(f"statistics of {name}", _collect_to_file, path, tensors, cap, name, out, limit, max_bytes)
    if not out.is_file():
        raise RuntimeError(f"statistics of {name}: the child process wrote no {out}")
