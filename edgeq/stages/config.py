"""The build plan: every option, profile and preset default settled once, before any work.

``BuildOptions`` is what the command line (or a caller) gives, ``None`` meaning "the default";
:func:`resolve` loads the profile first (a bad profile fails in well under a second), then the
model's weights and spec, and returns a frozen :class:`BuildPlan` that says what the build will do.
``edgeq build ... --print-config`` prints it; its ``to_dict`` is recorded in the manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from edgeq.errors import EdgeqError
from edgeq.fsutil import ensure_writable_dir

GROUP_MODES = ("shared", "per-group", "gains", "auto")
GROUPINGS = ("uniform", "profile")
HELDOUT_SEED = 100_000  # held-out images use seeds from here on; calibration uses --seed + index
PATH_OPTIONS = ("out", "weights", "config_dir", "calib_prompts", "heldout_prompts", "cache_dir")


@dataclass(frozen=True)
class BuildOptions:
    """Everything `edgeq build` takes. None means: the target profile's or the preset's default."""

    model: str
    target: str = "ort-cpu"
    out: Path | None = None
    weights: Path | None = None
    config_dir: Path | None = None
    steps: int | None = None  # denoising steps captured and deployed; None: the model's
    guidance: float | None = None  # guidance scale captured and deployed; None: the model's
    height: int | None = None  # image pixels exported, captured and deployed; None: the profile's, else the model's
    width: int | None = None
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
    cpu: str | None = None  # CPU targets: the int8 kernel family to build for (None: the profile's [cpu] family)
    cluster: str | None = None  # capture and statistics on Ray: "ray" (local) or an address; None: this process
    max_memory_gb: float | None = None  # statistics split their passes to stay under it; None: what is free

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BuildOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: Path(v) if k in PATH_OPTIONS and v is not None else v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class BuildPlan:
    """What a build does, resolved: the stage inputs that options, profile and preset decide."""

    model: str
    target: str  # the profile's name
    profile: str  # the profile file
    groups: int
    group_mode: str
    grouping: str
    range_method: str | None  # None: each component's profile method
    goal_sqnr_db: float | None  # mixed precision goal (None: off)
    calib_prompts: str
    num_calib: int
    calib_calls: int | None  # None: every captured call
    heldout_prompts: str
    num_heldout: int
    seed: int
    cache_dir: str
    out: str
    onnx_only: bool
    cpu_family: str | None = None  # CPU targets: the family built for (host resolved), else None
    weight_bits: int = 8  # what the family asks of int8 weights (components may fix their own)
    weight_bits_reason: str = ""
    steps: int | None = None  # denoising steps captured, checked and deployed as the default
    guidance: float | None = None  # guidance scale captured, checked and deployed as the default
    groups_reason: str = ""  # why ``groups`` differs from what was asked, if it does
    height: int | None = None  # image pixels; None: the model's resolution
    width: int | None = None
    max_memory_gb: float | None = None  # the statistics' memory ceiling (None: what the system has free)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BuildPlan:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def _at_least(name: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise EdgeqError(f"--{name} must be at least {low}, got {value}")


def resolve(opts: BuildOptions):
    """The profile, weight source and plan of a build; nothing is exported or written yet."""
    from edgeq.data import prompt_file
    from edgeq.models.weights import resolve as resolve_weights
    from edgeq.profiles import load_profile

    profile = load_profile(opts.target)
    cal = profile.calibration
    groups = opts.groups if opts.groups is not None else cal.groups
    mode = opts.group_mode or cal.group_mode
    grouping = opts.grouping or cal.grouping
    _at_least("groups", groups, 1)
    if mode not in GROUP_MODES:
        raise EdgeqError(f"--group-mode {mode!r} is not one of {', '.join(GROUP_MODES)}")
    if grouping not in GROUPINGS:
        raise EdgeqError(f"--grouping {grouping!r} is not one of {', '.join(GROUPINGS)}")
    _at_least("calib-calls", opts.calib_calls, 1)
    from edgeq.calibrate.histogram import RANGE_CHOICES

    if opts.range_method and opts.range_method not in RANGE_CHOICES:
        raise EdgeqError(f"--range-method {opts.range_method!r} is not one of {', '.join(RANGE_CHOICES)}")
    _at_least("num-calib", opts.num_calib, 1)
    _at_least("num-heldout", opts.num_heldout, 1)
    _at_least("steps", opts.steps, 1)
    if opts.max_memory_gb is not None and opts.max_memory_gb < 1:
        raise EdgeqError(
            f"--max-memory {opts.max_memory_gb} GB is too little for any model",
            "give the build's memory ceiling in GB, e.g. --max-memory 20",
        )
    if opts.guidance is not None and opts.guidance < 0:
        raise EdgeqError(f"--guidance must be at least 0, got {opts.guidance}")
    height = opts.height or profile.export.height
    width = opts.width or profile.export.width
    for name, v in (("height", height), ("width", width)):
        if v is not None and (v < 8 or v % 8):
            raise EdgeqError(
                f"--{name} {v} is not a positive multiple of 8", f"give a multiple of 8, e.g. --{name} 512"
            )
    family, bits, why = cpu_flavour(profile, opts.cpu)
    source = resolve_weights(opts.model, opts.weights, opts.config_dir)
    spec = source.spec
    steps = opts.steps or spec.steps
    guidance = spec.guidance if opts.guidance is None else opts.guidance
    groups_reason = ""
    if groups > steps:
        if opts.groups is not None:
            raise EdgeqError(
                f"--groups {groups} is more than the {steps} denoising steps this build calibrates",
                f"use at most {steps} groups (one per step), or more --steps",
            )
        groups_reason = f"the profile's {groups} groups capped at the {steps} denoising steps: one group per step"
        groups = steps
    calib_calls = opts.calib_calls if opts.calib_calls is not None else spec.calib_calls
    if calib_calls is not None and calib_calls < steps:
        raise EdgeqError(
            f"--calib-calls {calib_calls} is fewer than the {steps} denoising steps",
            f"give at least {steps}, so every step has statistics",
        )
    slug = spec.name.strip("./").replace("/", "_")
    out = opts.out or Path("build") / f"{slug}-{profile.name}"
    cache = opts.cache_dir or Path("build") / ".cache" / f"{slug}-{source.fingerprint()[:12]}"
    if opts.out is not None:
        ensure_writable_dir(opts.out)
    plan = BuildPlan(
        model=spec.name,
        target=profile.name,
        profile=str(profile.path),
        groups=groups,
        group_mode=mode,
        grouping=grouping,
        range_method=opts.range_method,
        goal_sqnr_db=opts.goal_sqnr_db if opts.goal_sqnr_db is not None else profile.policy("unet").goal_sqnr_db,
        calib_prompts=str(opts.calib_prompts or prompt_file(spec.calibration_data, "calibration")),
        num_calib=opts.num_calib if opts.num_calib is not None else spec.num_calib,
        calib_calls=calib_calls,
        heldout_prompts=str(opts.heldout_prompts or prompt_file(spec.calibration_data, "heldout")),
        num_heldout=opts.num_heldout if opts.num_heldout is not None else spec.num_heldout,
        seed=opts.seed,
        cache_dir=str(cache),
        out=str(out),
        onnx_only=opts.onnx_only,
        cpu_family=family,
        weight_bits=bits,
        weight_bits_reason=why,
        steps=steps,
        guidance=guidance,
        groups_reason=groups_reason,
        height=height,
        width=width,
        max_memory_gb=opts.max_memory_gb,
    )
    return profile, source, plan


def cpu_flavour(profile, requested: str | None) -> tuple[str | None, int, str]:
    """The CPU family a build is for (``host`` detected) and the weight bits it asks for, with why."""
    from edgeq.profiles.schema import CPU_FAMILIES

    if profile.cpu is None:
        if requested is not None:
            raise EdgeqError(
                f"--cpu {requested}: the {profile.name} target does not run on CPU int8 kernels",
                "leave --cpu out for this target",
            )
        return None, 8, "no CPU int8 kernels: 8-bit weights"
    family = requested or profile.cpu.family
    if family not in CPU_FAMILIES:
        raise EdgeqError(f"--cpu {family!r} is not one of {', '.join(CPU_FAMILIES)}", "host is this machine's family")
    from edgeq.runtime.cpu import detect, weight_bits_for

    if family == "host":
        family = detect().family
    bits, why = weight_bits_for(family)
    return family, bits, why
