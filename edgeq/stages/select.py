"""Variant checks and selection: each UNet variant measured on held-out calls, one deployed.

Shared, per-group and (where built) gains graphs run on the target's own runner; ``auto`` keeps
grouping only where it gains ``auto_min_gain_db`` in the worst group, and prefers gains (one
graph) within ``gains_tolerance_db`` of the per-group graphs.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeq.calibrate.capture import Capture
from edgeq.stages.context import Context
from edgeq.stages.qdq import QuantizedUnet


@dataclass(frozen=True)
class VariantMetrics:
    """UNet SQNR and cosine per timestep group, per variant, on held-out calls; ``outputs``: each
    variant's outputs of the verification bundle's calls (:func:`edgeq.stages.fidelity.pick_calls`)
    by (prompt, step), so that the build host's device check need not run them again (not saved)."""

    rows: dict[str, list[dict[str, Any]]]  # variant -> one row per group
    outputs: dict[str, dict[tuple[int, int], np.ndarray]] = field(default_factory=dict, compare=False, repr=False)

    def worst(self, variant: str) -> float:
        return min(r["sqnr_db"] for r in self.rows[variant])

    def to_dict(self) -> dict[str, list[dict[str, Any]]]:
        return dict(self.rows)

    @classmethod
    def from_dict(cls, d: dict[str, list[dict[str, Any]]]) -> VariantMetrics:
        return cls(dict(d))


def check_variants(ctx: Context, target, unet: QuantizedUnet, held: Capture) -> VariantMetrics:
    from edgeq.runtime.sessions import LazyRunner, one_group_at_a_time
    from edgeq.stages.fidelity import pick_calls
    from edgeq.verify.checks import unet_groups

    groups = unet.group_dicts
    fp32 = LazyRunner(ctx.export.path("unet"))
    rows: dict[str, list[dict]] = {}
    keep = set(pick_calls(held, groups, ctx.profile.gates.verify_calls_per_group))
    outputs: dict[str, dict[tuple[int, int], np.ndarray]] = {}
    modes = ["shared"] + ["per-group"] * (unet.per_group_dir is not None) + ["gains"] * (unet.gains_dir is not None)
    # per-group graphs one at a time: unet_groups runs the calls group by group
    with ctx.stages.timed("check_unet_s"), one_group_at_a_time():
        for mode in modes:
            runner = unet.runner(mode, lambda graphs: target.unet_runner(ctx, graphs))
            outputs[mode] = {}
            rows[mode] = unet_groups(fp32, runner, held, groups, f"check unet ({mode})", keep, outputs[mode])
            del runner  # a full-size UNet session holds gigabytes: one variant in memory at a time
            gc.collect()
        del fp32
    return VariantMetrics(rows, outputs)


def choose_mode(ctx: Context, unet: QuantizedUnet, metrics: VariantMetrics) -> str:
    """The variant to deploy, by the plan's group mode (``auto``: by the measurements)."""
    if unet.per_group_dir is None:
        return "shared"
    if ctx.plan.group_mode != "auto":
        return ctx.plan.group_mode
    cal = ctx.profile.calibration
    if max(metrics.worst(k) for k in metrics.rows) - metrics.worst("shared") < cal.auto_min_gain_db:
        return "shared"  # grouping does not pay for itself
    if "gains" in metrics.rows and metrics.worst("gains") >= metrics.worst("per-group") - cal.gains_tolerance_db:
        return "gains"  # one graph and one set of weights, within the tolerance of per-group graphs
    return "per-group"
