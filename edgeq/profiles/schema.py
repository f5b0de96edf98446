"""The typed sections of a target profile, and one validator that reads them as the schema.

Each section is a frozen dataclass. The validator takes its field types (str, bool, int, float,
``X | None``, ``tuple[T, ...]``, fixed-length tuples, dicts, nested dataclasses) and its field
``metadata`` (``choices``, ``min``/``max`` inclusive, ``above``/``below`` exclusive, ``help``), so a
new option is declared once, with its constraint and its description. A dataclass may add
``check(self) -> str | None`` for rules across fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeq.errors import EdgeqError

TYPES = ("uint8", "int8", "uint16", "int16")
GROUP_MODES = ("shared", "per-group", "gains", "auto")
GROUPINGS = ("uniform", "profile")


def _range_choices() -> tuple[str, ...]:
    from edgeq.calibrate.histogram import RANGE_CHOICES  # numpy: imported only when a profile is checked

    return tuple(RANGE_CHOICES)


def setting(default: Any, help: str, **constraints: Any) -> Any:
    """A field with its description and constraints (``choices``, ``min``, ``max``, ``above``, ``below``)."""
    return field(default=default, metadata={"help": help, **constraints})


@dataclass(frozen=True)
class Exclusion:
    """A node left float, and why."""

    pattern: str = field(metadata={"help": "regular expression searched in the ONNX node name"})
    reason: str = field(metadata={"help": "why the matching nodes stay float (printed in the quant plan)"})

    def check(self) -> str | None:
        if not self.pattern.strip():
            return "exclusion has no pattern"
        if not self.reason.strip():
            return f"exclusion {self.pattern!r} has no reason (every exclusion needs one)"
        try:
            re.compile(self.pattern)
        except re.error as err:
            return f"exclusion pattern {self.pattern!r} is not a valid regular expression ({err})"
        return None


@dataclass(frozen=True)
class FamilyChoice:
    """What a component does differently on one CPU family (``[unet.by_family.x86-novnni]``), and why."""

    float_op_types: tuple[str, ...] = setting((), "op types of op_types left float on this family")
    float_reason: str = setting("", "why, as measured (printed in the quant plan beside each node)")
    activation_type: str | None = setting(
        None, "activation integer type on this family (unset: the component's)", choices=TYPES
    )
    activation_symmetric: bool | None = setting(None, "activation zero point 0 on this family (unset: the component's)")
    activation_matmul: str | None = setting(
        None, "MatMul of two activations on this family (unset: the component's)", choices=("float", "int8")
    )
    attention_probs: str | None = setting(
        None, "the softmax output into int8 A.V on this family (unset: the component's)", choices=("int8", "float")
    )
    flavour_reason: str = setting("", "why this family's activation flavour differs, as measured")

    def flavour(self) -> dict[str, Any]:
        """The activation settings this family changes."""
        names = ("activation_type", "activation_symmetric", "activation_matmul", "attention_probs")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def check(self) -> str | None:
        if self.float_op_types and not self.float_reason.strip():
            return "float_op_types needs a float_reason (why those op types stay float, as measured)"
        if self.flavour() and not self.flavour_reason.strip():
            return f"{', '.join(self.flavour())} need a flavour_reason (why this family differs, as measured)"
        return None


@dataclass(frozen=True)
class ComponentPolicy:
    """How one component is quantized: which ops, which types, which nodes stay float and why."""

    mode: str = field(metadata={"choices": ("int8", "float"), "help": "int8: Q/DQ; float: left as exported"})
    reason: str = setting("", "why the component stays float")
    op_types: tuple[str, ...] = setting(("Conv", "MatMul", "Gemm"), "ONNX op types that get Q/DQ")
    activation_type: str = setting("uint8", "activation integer type", choices=TYPES)
    activation_symmetric: bool = setting(False, "activation zero point 0")
    weight_type: str = setting("int8", "weight integer type", choices=TYPES)
    weight_symmetric: bool = setting(True, "weight zero point 0")
    weight_bits: int | None = setting(
        None,
        "int8 weights in 8 or 7 bits (|q| <= 64, ONNX Runtime's reduce_range); unset: the [cpu] family's choice "
        "(7 where the CPU's u8 x s8 kernels saturate), 8 on targets without CPU kernels",
        choices=(7, 8),
    )
    per_channel: bool = setting(True, "per-output-channel weight scales")
    per_channel_op_types: tuple[str, ...] = setting(
        (), "op types whose weights are per-channel (empty: all of op_types; QNN: Conv only)"
    )
    quantize_bias: bool = setting(True, "int32 biases")
    range_method: str = setting("mse", "activation range selection", choices=_range_choices)
    activation_matmul: str = setting(
        "float", "MatMul of two activations (attention Q.K^T, A.V)", choices=("float", "int8")
    )
    attention_probs: str = setting(
        "int8",
        "the softmax output an int8 A.V MatMul reads: int8 (Q/DQ) or float (Q/DQ on Q, K and V only, NNCF's placement)",
        choices=("int8", "float"),
    )
    output_quantization: bool = setting(True, "Q/DQ on quantized ops' outputs too (TensorRT: inputs only)")
    weight_qdq_pair: bool = setting(False, "float weights behind a Q/DQ pair instead of int8 weights + DQ")
    goal_sqnr_db: float | None = setting(
        None, "mixed precision: the worst timestep group's UNet SQNR to reach by leaving nodes float (off: unset)"
    )
    goal_margin_db: float = setting(
        0.5, "how far above the goal the search aims (its simulation reads above the deployed graph)", min=0.0
    )
    split_concat_convs: bool = setting(False, "a Conv on a channel Concat becomes one Conv per input plus Adds")
    split_min_ratio: float = setting(2.0, "split where the Concat inputs' ranges differ by this ratio", min=1.0)
    smoothquant: bool = setting(False, "SmoothQuant folded into the LayerNorms that feed linear layers")
    smoothquant_alphas: tuple[float, ...] = setting(
        (0.25, 0.5, 0.75), "SmoothQuant strengths tried (and off), by measured worst-group SQNR", above=0.0, below=1.0
    )
    float_op_types: tuple[str, ...] = setting(
        (), "op types of op_types left float (every such node is in the quant plan with float_reason)"
    )
    float_reason: str = setting("", "why float_op_types stay float")
    flavour_reason: str = setting("", "why this activation flavour, as measured (a by_family entry sets it)")
    by_family: dict[str, FamilyChoice] = field(
        default_factory=dict,
        metadata={"help": "per CPU family (x86-vnni, x86-novnni, ...): float_op_types / float_reason used there"},
    )
    max_float_mac_share: float = setting(0.10, "mixed precision: most MACs left float", min=0.0, max=1.0)
    exclude: tuple[Exclusion, ...] = setting((), "nodes left float: { pattern = ..., reason = ... }")

    def check(self) -> str | None:
        extra = set(self.per_channel_op_types) - set(self.op_types)
        if extra:
            return f"per_channel_op_types {sorted(extra)} are not among op_types {list(self.op_types)}"
        # float_op_types outside op_types are allowed: a profile that extends another may narrow op_types
        if self.float_op_types and not self.float_reason.strip():
            return "float_op_types needs a float_reason (why those op types stay float, as measured)"
        unknown = set(self.by_family) - (set(CPU_FAMILIES) - {"host"})
        if unknown:
            return f"by_family names {sorted(unknown)}, not CPU families ({', '.join(CPU_FAMILIES[1:])})"
        return None

    def for_family(self, family: str | None) -> ComponentPolicy:
        """The policy a build for ``family`` uses: its ``by_family`` entry replaces float_op_types, and
        the activation settings it names (with its flavour_reason)."""
        choice = self.by_family.get(family or "")
        if choice is None:
            return self
        return replace(
            self,
            float_op_types=choice.float_op_types,
            float_reason=f"{family}: {choice.float_reason}",
            **choice.flavour(),
            **({"flavour_reason": f"{family}: {choice.flavour_reason}"} if choice.flavour() else {}),
        )

    def per_channel_types(self) -> tuple[str, ...]:
        return self.per_channel_op_types or self.op_types

    def excluded_by(self, node_name: str) -> Exclusion | None:
        return next((e for e in self.exclude if re.search(e.pattern, node_name)), None)


@dataclass(frozen=True)
class Gates:
    """The accuracy gates: a build below any of them fails (exit 3)."""

    unet_sqnr_db: float = setting(20.0, "UNet noise prediction vs FP32, per timestep group, dB")
    unet_cosine: float = setting(0.99, "UNet noise prediction cosine vs FP32", min=0.0, max=1.0)
    vae_psnr_db: float = setting(30.0, "VAE decoder alone on held-out final latents, dB")
    e2e_psnr_db: float = setting(20.0, "whole pipeline vs FP32 images from the same seeds, dB")
    e2e_ssim: float = setting(0.8, "whole pipeline SSIM vs FP32", min=0.0, max=1.0)
    adherence_drop: float = setting(5.0, "tiny-sd: most points lost against FP32 per attribute", min=0.0, max=100.0)
    kernel_gap_db: float = setting(
        1.0, "UNet SQNR lost by the deployed int8 kernels against the exact Q/DQ arithmetic, per group, dB", min=0.0
    )
    verify_calls_per_group: int = setting(
        4, "held-out UNet calls per timestep group in the verification bundle (kernel gate, `edgeq check`)", min=1
    )
    verify_images: int = setting(2, "FP32 reference images in the verification bundle (`edgeq check`)", min=0)


CPU_FAMILIES = ("host", "x86-vnni", "x86-novnni", "arm-dotprod", "arm", "portable")


@dataclass(frozen=True)
class CpuFlavour:
    """The ``[cpu]`` section of CPU targets: the int8 kernel family the build is made and checked for."""

    family: str = setting(
        "host",
        "host: this machine's (detected); portable: exact on every family; or a family by name",
        choices=CPU_FAMILIES,
    )
    check_other_families: bool = setting(
        True, "also check families this machine can emulate (OpenVINO on AVX-512 VNNI: x86 without VNNI)"
    )


@dataclass(frozen=True)
class CalibrationDefaults:
    """Timestep grouping defaults (the command line overrides them)."""

    groups: int = setting(4, "timestep groups (1: classic calibration)", min=1)
    group_mode: str = setting("auto", "how groups are deployed", choices=GROUP_MODES)
    grouping: str = setting("profile", "equal step counts, or merge steps with alike ranges", choices=GROUPINGS)
    auto_min_gain_db: float = setting(0.5, "auto: group only when the worst group gains this much", min=0.0)
    group_gains: bool = setting(True, "build group gains (one graph, per-group scales as a runtime input)")
    gains_tolerance_db: float = setting(0.25, "auto: gains when within this of the per-group graphs", min=0.0)
    gains_min_bits: float = setting(
        0.1, "gains only for tensors whose group scales differ from the shared one by this many bits", min=0.0
    )
    auto_gains: bool = setting(True, "auto may deploy gains (false where their ops stop the int8 kernels)")
    gains_attention: bool = setting(
        True,
        "gains may go on attention cores: Q, K, V, scores, probabilities, context (false: OpenVINO keeps them fused)",
    )


@dataclass(frozen=True)
class ExportDefaults:
    """The ``[export]`` section: static shapes for runtimes that need them (mobile EPs)."""

    static: bool = setting(False, "fixed shapes instead of dynamic batch and spatial axes")
    batch: int = setting(2, "the classifier-free-guidance batch", min=1)
    height: int | None = setting(None, "image pixels (default: the model's resolution)", min=8)
    width: int | None = setting(None, "image pixels (default: the model's resolution)", min=8)
    opset: int = setting(17, "ONNX opset", min=17)


# -- the validator ----------------------------------------------------------------------------------
def show(value: Any) -> str:
    """A value as a profile writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        value = list(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} {_type_name(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict or tp is dict:
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {str: "a string", bool: "true or false", int: "an integer", float: "a number"}.get(tp, str(tp))


def _choices(meta: typing.Mapping[str, Any]) -> tuple[Any, ...] | None:
    c = meta.get("choices")
    return tuple(c()) if callable(c) else (tuple(c) if c is not None else None)


def expectation(tp: Any, meta: typing.Mapping[str, Any]) -> str:
    """What a field accepts, in words (the hint of an error, and help text)."""
    choices = _choices(meta)
    if choices is not None:
        text = "one of " + ", ".join(str(c) for c in choices)
    else:
        text = _type_name(tp)
        bounds = [
            f"{op} {meta[k]}" for k, op in (("min", ">="), ("above", ">"), ("max", "<="), ("below", "<")) if k in meta
        ]
        if bounds:
            text += (", each " if typing.get_origin(tp) is tuple else " ") + " and ".join(bounds)
    return text + (f" ({meta['help']})" if meta.get("help") else "")


class Where:
    """Where a value sits, for messages: the file, the top-level section and the path inside it.

    ``origin(section, key)`` names the file that set a key when the profile extends others."""

    def __init__(self, file: Path | str, section: str, path: str = "", origin: Origin | None = None):
        self.file, self.section, self.path, self.origin = file, section, path, origin

    def fail(self, key: str | None, value: Any, problem: str, hint: str | None) -> EdgeqError:
        top = re.split(r"[\[.]", key or "")[0] if not self.path else self.path.split()[0].split("[")[0]
        file = self.origin(self.section, top) if self.origin else self.file
        at = f"[{self.section}]{self.path}" + (f" {key}" if key else "")
        shown = f" = {show(value)}" if key is not None and value is not _MISSING else ""
        return EdgeqError(f"{file}: {at}{shown}: {problem}", hint)

    def inside(self, path: str) -> Where:
        return Where(self.file, self.section, f"{self.path}{path}", self.origin)


Origin = Callable[[str, str], Path | str]
_MISSING = object()


def _convert(tp: Any, value: Any, meta: typing.Mapping[str, Any], key: str, where: Where) -> Any:
    given = value

    def bad(problem: str) -> EdgeqError:
        return where.fail(key, given, problem, f"{key}: {expectation(tp, meta)}")

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0] if len(inner) == 1 else Any, value, meta, key, where)
    if tp is Any:
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad(f"is not {_type_name(tp)}")
        homogeneous = len(args) == 2 and args[1] is Ellipsis
        if not homogeneous and len(value) != len(args):
            raise bad(f"has {len(value)} values, not {len(args)}")
        elems = [args[0]] * len(value) if homogeneous else list(args)
        return tuple(
            _convert(t, v, meta, f"{key}[{i}]", where)
            if not dataclasses.is_dataclass(t)
            else _table(t, v, key, i, where)
            for i, (t, v) in enumerate(zip(elems, value))
        )
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad("is not a table")
        if not args:
            return dict(value)
        return {
            _convert(args[0], k, {}, f"{key} key", where): _convert(args[1], v, {}, f"{key}.{k}", where)
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        return _table(tp, value, key, None, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("is not true or false")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("is not an integer")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("is not a number")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise bad("is not a string")
    choices = _choices(meta)
    if choices is not None and value not in choices:
        raise bad("is not allowed")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi, gt, lt = (meta.get(k) for k in ("min", "max", "above", "below"))
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise bad("is out of range")
        if (gt is not None and value <= gt) or (lt is not None and value >= lt):
            raise bad("is out of range")
    return value


def _table(cls: Any, value: Any, key: str, index: int | None, where: Where) -> Any:
    if not isinstance(value, dict):
        raise where.fail(key, value, "is not a table", f"{key}: {_type_name(cls)} of {', '.join(field_names(cls))}")
    return validate(cls, value, where.inside(f" {key}" + (f"[{index}]" if index is not None else "")))


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def validate(cls: type, raw: typing.Mapping[str, Any], where: Where) -> Any:
    """``raw`` (a TOML table) as an instance of dataclass ``cls``: every key known, every value typed
    and within its field's constraints, then ``cls.check()``; else an :class:`EdgeqError` naming
    the file, section, key and value, with what is allowed as its hint."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise where.fail(
                key, _MISSING, "unknown key", f"{_suggest(key, list(known))}known keys: {', '.join(known)}"
            )
    values = {}
    for name, f in known.items():
        if name in raw:
            values[name] = _convert(hints.get(name, Any), raw[name], f.metadata, name, where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise where.fail(None, _MISSING, f"has no {name}", f"{name}: {expectation(hints.get(name), f.metadata)}")
    try:
        obj = cls(**values)
    except (TypeError, ValueError) as e:  # an Options class whose __post_init__ refuses the values
        raise where.fail(None, _MISSING, str(e), f"known keys: {', '.join(known)}") from None
    check = getattr(obj, "check", None)
    problem = check() if callable(check) else None
    if problem:
        raise where.fail(None, _MISSING, problem, _check_hint(cls, problem))
    return obj


def _check_hint(cls: type, problem: str) -> str:
    """The help of the fields a cross-field message names."""
    named = [f for f in dataclasses.fields(cls) if re.search(rf"\b{re.escape(f.name)}\b", problem)]
    hints = typing.get_type_hints(cls)
    return "; ".join(f"{f.name}: {expectation(hints.get(f.name), f.metadata)}" for f in named) or cls.__doc__ or ""
