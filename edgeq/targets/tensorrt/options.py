"""The profile's ``[tensorrt]`` section: optimization profiles and builder settings.

Field types and ``metadata`` (``choices``, ``min``, ``above``, ``help``) describe each option to the generic
profile validator; :meth:`TrtOptions.check` adds what one field alone cannot say.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from edgeq.errors import EdgeqError

FLOAT_PRECISIONS = ("fp16", "fp32")


@dataclass(frozen=True)
class TrtOptions:
    """How the engines are built: shape ranges, builder workspace and effort, float precision."""

    batch: tuple[int, int, int] = field(
        default=(1, 1, 4),
        metadata={
            "min": 1,
            "help": "images per prompt batch [min, opt, max]; the UNet and text encoder double it for "
            "classifier-free guidance",
        },
    )
    resolution_scale: tuple[float, float, float] = field(
        default=(0.5, 1.0, 2.0),
        metadata={"above": 0, "help": "image side [min, opt, max] as multiples of the model's native resolution"},
    )
    workspace_gib: float = field(default=8.0, metadata={"help": "builder workspace memory pool, GiB"})
    builder_optimization_level: int = field(
        default=3, metadata={"help": "TensorRT builder optimization level: higher builds longer, may run faster"}
    )
    float_precision: str = field(
        default="fp16",
        metadata={
            "choices": FLOAT_PRECISIONS,
            "help": "precision of what is not INT8 in each engine (the graph is converted before the build)",
        },
    )
    keep_fp32: tuple[str, ...] = field(
        default=("^/time_proj/",),
        metadata={"help": "node name patterns (regex) kept FP32, with every node they depend on"},
    )

    def check(self) -> str | None:
        """What is wrong with these options as a whole (None: nothing)."""
        b, s = self.batch, self.resolution_scale
        if len(b) != 3 or not (1 <= b[0] <= b[1] <= b[2]):
            return f"batch must be [min, opt, max] with 1 <= min <= opt <= max, got {b}"
        if len(s) != 3 or not (0 < s[0] <= s[1] <= s[2]):
            return f"resolution_scale must be [min, opt, max] > 0, got {s}"
        return None

    @classmethod
    def from_profile(cls, raw: dict[str, Any], where: str = "the profile") -> TrtOptions:
        """The options from a raw ``[tensorrt]`` table (for callers without the generic validator)."""
        d = dict(raw)
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise EdgeqError(f"{where}: unknown keys in [tensorrt]: {', '.join(sorted(unknown))}")
        for k in ("batch", "resolution_scale", "keep_fp32"):
            if k in d:
                d[k] = tuple(d[k])
        opts = cls(**d)
        problem = opts.check()
        if problem is None and opts.float_precision not in FLOAT_PRECISIONS:
            problem = f"float_precision must be fp16 or fp32, not {opts.float_precision!r}"
        if problem:
            raise EdgeqError(f"{where}: [tensorrt] {problem}")
        return opts
