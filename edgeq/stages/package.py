"""Packaging: the target writes its deployable; edgeq adds the quant plan, summary and manifest.

The folder is written under a temporary name (:func:`edgeq.fsutil.staged_dir`) by the caller and
renamed when complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq.fsutil import write_json
from edgeq.manifest import artifact_table, library_versions, write_manifest
from edgeq.quantize.policy import summary
from edgeq.stages.context import Context
from edgeq.stages.plan import ComponentPlan, QuantPlan
from edgeq.stages.qdq import QuantizedUnet
from edgeq.stages.select import VariantMetrics


@dataclass(frozen=True)
class Deployable:
    """A packaged build folder (still staged) and what its manifest says."""

    folder: Path
    manifest: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "manifest": self.manifest}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Deployable:
        return cls(Path(d["folder"]), d["manifest"])


def quant_counts(cals: dict) -> dict[str, dict[str, int]]:
    return {
        k: {
            "quantized": sum(d.quantized for d in c.decisions),
            "float": sum(not d.quantized for d in c.decisions),
            "activation_tensors": len(c.tensors),
        }
        for k, c in cals.items()
    }


def _unet_info(unet: QuantizedUnet | None, metrics: VariantMetrics | None, chosen: str) -> dict[str, Any]:
    if unet is None or metrics is None:
        return {}
    mp, rc = unet.plan.mixed_precision, unet.plan.range_choice
    info = {
        "mode": chosen,
        "groups": unet.group_dicts,
        "variants": metrics.to_dict(),
        "precision": {
            "float_macs": unet.plan.float_macs,
            "mixed_precision": {k: v for k, v in mp.items() if k != "macs"} if mp else None,
            "range_choice": {k: v for k, v in rc.items() if k != "classes"} if rc else None,
        },
    }
    g = unet.plan.gains
    if g:  # how many tensors the gains graph gains, of how many (gains_min_bits)
        info["gains"] = {k: g.get(k) for k in ("candidates", "min_bits", "fallback", "held_back")} | {
            "tensors": len(g["tensors"])
        }
    return info


def _settings(ctx: Context) -> dict[str, Any]:
    p = ctx.plan
    return {
        "groups": p.groups,
        "group_mode": p.group_mode,
        "grouping": p.grouping,
        "range_method": p.range_method,
        "num_calib": len(ctx.prompts("calibration")),
        "num_heldout": len(ctx.prompts("heldout")),
        "seed": p.seed,
        "profile": str(ctx.profile.path.name),
    }


def package(
    ctx: Context,
    target,
    stage: Path,
    cals: dict,
    unet: QuantizedUnet | None,
    metrics: VariantMetrics | None,
    chosen: str,
    vae: tuple[Path, ComponentPlan] | None,
) -> Deployable:
    """The target's deployable in ``stage``, with ``quant_plan.json``, ``quant_summary.txt`` and the manifest."""
    files, components = target.package(ctx, stage, unet, chosen, vae[0] if vae else None)
    plan = QuantPlan(ctx.profile.name, ctx.spec.name, chosen, unet.plan if unet else None, vae[1] if vae else None)
    write_json(stage / "quant_plan.json", plan.to_dict())
    (stage / "quant_summary.txt").write_text("".join(summary(c.decisions) for c in cals.values() if c.decisions))
    files += [stage / "quant_plan.json", stage / "quant_summary.txt"]
    base = ctx.export.manifest
    manifest = {
        "kind": "int8",
        "target": ctx.profile.name,
        "status": "unchecked",
        "model": base["model"],
        "pipeline": ctx.pipeline,
        "shapes": base["shapes"],
        "components": components,
        "tokenizers": base["tokenizers"],
        "scheduler_config": base["scheduler_config"],
        "versions": library_versions(),
        "quantization": {
            "group_mode": chosen,
            **_unet_info(unet, metrics, chosen),
            "settings": _settings(ctx),
            "profile": ctx.profile.raw,
        },
        "source_export": {"cache_key": base["cache_key"], "folder": str(ctx.export.folder.resolve())},
        "artifacts": artifact_table(stage, [str(f.relative_to(stage)) for f in files]),
        "build_options": ctx.opts.to_dict(),
        "build_plan": ctx.plan.to_dict(),
        "cache_dir": str(ctx.cache.resolve()),
        "quant_counts": quant_counts(cals),
        "timings": dict(ctx.timings),
        "peak_rss_gb": dict(ctx.stages.peak_rss_gb),
    }
    manifest.update(target.manifest_entries())
    status = target.engines_status(ctx, Path(ctx.plan.out))
    if status is not None:
        manifest["engines_status"] = status
    write_manifest(stage, manifest)
    return Deployable(stage, manifest)
