"""Target profiles: the declarative TOML files in the top-level ``targets/`` folder, as typed config."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeq.errors import EdgeqError

PROFILES_DIR = Path(__file__).resolve().parents[2] / "targets"
TYPES = ("uint8", "int8", "uint16", "int16")


@dataclass(frozen=True)
class Exclusion:
    pattern: str  # regular expression on the ONNX node name
    reason: str


@dataclass(frozen=True)
class ComponentPolicy:
    """How one component is quantized: which ops, which types, which nodes stay float and why."""

    mode: str  # int8 | float
    reason: str = ""
    op_types: tuple[str, ...] = ("Conv", "MatMul", "Gemm")
    activation_type: str = "uint8"
    activation_symmetric: bool = False
    weight_type: str = "int8"
    weight_symmetric: bool = True
    per_channel: bool = True
    # op types whose weights are per-channel when per_channel is on; empty: all of op_types (QNN: Conv
    # only, as the QNN EP has no per-channel MatMul)
    per_channel_op_types: tuple[str, ...] = ()
    quantize_bias: bool = True
    range_method: str = "mse"
    activation_matmul: str = "float"
    output_quantization: bool = True  # Q/DQ on quantized ops' outputs too (TensorRT: inputs only)
    weight_qdq_pair: bool = False  # float weights behind a Q/DQ pair instead of int8 weights + DQ
    # mixed precision: leave float the fewest nodes, chosen by measured sensitivity, that bring the
    # worst timestep group's UNet SQNR to this goal (None: off), within max_float_mac_share of the MACs
    goal_sqnr_db: float | None = None
    # the search aims this far above the goal: its simulation, on calibration calls, read 0.4 dB above
    # the deployed graph on held-out prompts (tiny-sd, ort-cpu)
    goal_margin_db: float = 0.5
    # shortcut splitting: a Conv on a channel Concat (UNet up blocks) becomes one Conv per input plus
    # Adds, each input with its own scale, where the inputs' ranges differ by split_min_ratio or more
    split_concat_convs: bool = False
    split_min_ratio: float = 2.0
    # SmoothQuant folded into the LayerNorms that feed linear layers; alpha chosen per model among
    # smoothquant_alphas (and off) by the measured worst-group SQNR (edgeq.quantize.smooth)
    smoothquant: bool = False
    smoothquant_alphas: tuple[float, ...] = (0.25, 0.5, 0.75)
    max_float_mac_share: float = 0.10
    exclude: tuple[Exclusion, ...] = ()

    def per_channel_types(self) -> tuple[str, ...]:
        return self.per_channel_op_types or self.op_types

    def excluded_by(self, node_name: str) -> Exclusion | None:
        return next((e for e in self.exclude if re.search(e.pattern, node_name)), None)


@dataclass(frozen=True)
class Gates:
    unet_sqnr_db: float = 20.0
    unet_cosine: float = 0.99
    vae_psnr_db: float = 30.0
    e2e_psnr_db: float = 20.0
    e2e_ssim: float = 0.8
    adherence_drop: float = 5.0


@dataclass(frozen=True)
class CalibrationDefaults:
    groups: int = 4
    group_mode: str = "auto"
    grouping: str = "profile"
    auto_min_gain_db: float = 0.5
    # group gains (one graph, per-group scales as a runtime input): with group_mode auto, built and
    # checked beside the per-group graphs and picked when their worst group is within
    # gains_tolerance_db of the per-group graphs'; auto_gains = false where the gains' ops stop the
    # runtime's int8 kernels (ONNX Runtime), so only --group-mode gains builds them there
    group_gains: bool = True
    gains_tolerance_db: float = 0.25
    auto_gains: bool = True


@dataclass(frozen=True)
class ExportDefaults:
    """The ``[export]`` section: static shapes for runtimes that need them (mobile EPs)."""

    static: bool = False
    batch: int = 2  # the classifier-free-guidance batch
    height: int | None = None  # image pixels; default: the model's resolution
    width: int | None = None
    opset: int = 17


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    runtime: str
    components: dict[str, ComponentPolicy]
    gates: Gates
    calibration: CalibrationDefaults
    export: ExportDefaults = field(default_factory=ExportDefaults)
    path: Path = field(default=Path())
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def runtime_options(self) -> dict[str, Any]:
        """The profile's section named after its runtime (device, precision hints, ...)."""
        return dict(self.raw.get(self.runtime, {}))

    def policy(self, component: str) -> ComponentPolicy:
        return self.components.get(component, ComponentPolicy(mode="float", reason="not named in the profile"))


def _component(name: str, d: dict[str, Any], path: Path) -> ComponentPolicy:
    d = dict(d)
    excl = []
    for e in d.pop("exclude", []):
        if not isinstance(e, dict) or not str(e.get("pattern", "")).strip():
            raise EdgeqError(
                f"{path}: an exclusion in [{name}] has no pattern", 'write { pattern = "...", reason = "..." }'
            )
        if not str(e.get("reason", "")).strip():
            raise EdgeqError(
                f"{path}: exclusion '{e['pattern']}' in [{name}] has no reason", "every exclusion needs a reason"
            )
        try:
            re.compile(e["pattern"])
        except re.error as err:
            raise EdgeqError(
                f"{path}: exclusion pattern {e['pattern']!r} in [{name}] is not a valid regular expression ({err})"
            ) from None
        excl.append(Exclusion(e["pattern"], e["reason"]))
    for key in ("op_types", "per_channel_op_types", "smoothquant_alphas"):
        if key in d:
            d[key] = tuple(d[key])
    unknown = set(d) - set(ComponentPolicy.__dataclass_fields__)
    if unknown:
        raise EdgeqError(f"{path}: unknown keys in [{name}]: {', '.join(sorted(unknown))}")
    pol = ComponentPolicy(exclude=tuple(excl), **d)
    if pol.mode not in ("int8", "float"):
        raise EdgeqError(f"{path}: [{name}] mode must be int8 or float, not {pol.mode!r}")
    if set(pol.per_channel_op_types) - set(pol.op_types):
        raise EdgeqError(f"{path}: [{name}] per_channel_op_types must be among op_types {list(pol.op_types)}")
    for t in (pol.activation_type, pol.weight_type):
        if t not in TYPES:
            raise EdgeqError(f"{path}: [{name}] type {t!r} is not one of {', '.join(TYPES)}")
    from edgeq.calibrate.histogram import RANGE_CHOICES

    if pol.range_method not in RANGE_CHOICES:
        raise EdgeqError(f"{path}: [{name}] range_method {pol.range_method!r} is not one of {', '.join(RANGE_CHOICES)}")
    if not all(0.0 < a < 1.0 for a in pol.smoothquant_alphas):
        raise EdgeqError(f"{path}: [{name}] smoothquant_alphas must lie strictly between 0 and 1")
    if not 0.0 <= pol.max_float_mac_share <= 1.0:
        raise EdgeqError(f"{path}: [{name}] max_float_mac_share must be between 0 and 1, not {pol.max_float_mac_share}")
    if pol.activation_matmul not in ("float", "int8"):
        raise EdgeqError(f"{path}: [{name}] activation_matmul must be float or int8, not {pol.activation_matmul!r}")
    return pol


def _section(cls, raw: dict[str, Any], key: str, path: Path):
    d = raw.get(key, {})
    unknown = set(d) - set(cls.__dataclass_fields__)
    if unknown:
        raise EdgeqError(
            f"{path}: unknown keys in [{key}]: {', '.join(sorted(unknown))}",
            f"known: {', '.join(cls.__dataclass_fields__)}",
        )
    return cls(**d)


def load_profile(target: str) -> Profile:
    path = Path(target) if target.endswith(".toml") else PROFILES_DIR / f"{target}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))
        raise EdgeqError(f"no target profile {path}", f"targets with a profile: {', '.join(known)}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise EdgeqError(f"{path} is not valid TOML: {e}") from None
    comps = {
        k: _component(k, v, path)
        for k, v in raw.items()
        if k in ("unet", "vae_decoder", "text_encoder", "text_encoder_2")
    }
    return Profile(
        name=raw.get("name", path.stem),
        description=raw.get("description", ""),
        runtime=raw.get("runtime", "onnxruntime"),
        components=comps,
        gates=_section(Gates, raw, "gates", path),
        calibration=_section(CalibrationDefaults, raw, "calibration", path),
        export=_section(ExportDefaults, raw, "export", path),
        path=path,
        raw=raw,
    )
