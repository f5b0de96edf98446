"""The export stage and the context every later stage reads: plan, profile, FP32 export, cache.

:func:`prepare` resolves the plan (profile first), then exports the FP32 pipeline or reuses it.
The :class:`Export` is the stage-border object for the FP32 graphs: a folder and its manifest,
with :meth:`Export.path` as the one way to find a component's graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq.calibrate.capture import read_prompts
from edgeq.fsutil import ensure_writable_dir
from edgeq.stages.cache import StageCache
from edgeq.stages.config import BuildOptions, BuildPlan, resolve


@dataclass(frozen=True)
class Export:
    """The FP32 build folder (optimum's ONNX layout) and its manifest."""

    folder: Path
    manifest: dict[str, Any]

    def path(self, component: str) -> Path:
        return self.folder / self.manifest["components"][component]["path"]

    def has(self, component: str) -> bool:
        return component in self.manifest["components"]

    @property
    def key(self) -> str:
        return self.manifest["cache_key"]

    def to_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "cache_key": self.key}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Export:
        from edgeq.manifest import read_manifest

        return cls(Path(d["folder"]), read_manifest(Path(d["folder"])))

    @property
    def pipeline(self) -> dict[str, Any]:
        return self.manifest["pipeline"]


@dataclass(frozen=True)
class Context:
    """What the stages of one build share. Targets read ``profile``, ``export_dir``,
    ``export_manifest``, ``cache`` (the folder) and ``opts``."""

    opts: BuildOptions
    plan: BuildPlan
    source: Any  # edgeq.models.weights.WeightSource
    profile: Any  # edgeq.profiles.Profile
    export: Export
    stages: StageCache
    cluster: Any = None  # edgeq.stages.cluster.RayCluster: capture and statistics run there (None: here)

    @property
    def spec(self):
        return self.source.spec

    @property
    def cache(self) -> Path:
        return self.stages.root

    @property
    def export_dir(self) -> Path:
        return self.export.folder

    @property
    def export_manifest(self) -> dict[str, Any]:
        return self.export.manifest

    @property
    def timings(self) -> dict[str, float]:
        return self.stages.timings

    @property
    def pipeline(self) -> dict[str, Any]:
        """The export's pipeline defaults with the plan's steps and guidance: the schedule the build
        captures, checks and deploys."""
        return {**self.export.pipeline, "steps": self.plan.steps, "guidance": self.plan.guidance}

    def prompts(self, which: str) -> list[str]:
        """The first ``num_calib`` / ``num_heldout`` prompts of the plan's prompt file."""
        p = self.plan
        path, n = (p.calib_prompts, p.num_calib) if which == "calibration" else (p.heldout_prompts, p.num_heldout)
        return read_prompts(Path(path))[:n]


def for_family(profile, bits: int, family: str | None):
    """The profile for a CPU family: every int8-weight component's unset ``weight_bits`` set to the
    family's ``bits``, and each component's ``by_family`` entry for ``family`` applied."""
    from dataclasses import replace

    comps = {
        name: replace(p, weight_bits=bits if p.weight_bits is None else p.weight_bits).for_family(family)
        for name, p in profile.components.items()
    }
    return replace(profile, components=comps)


def prepare(opts: BuildOptions, log=print, cluster=None) -> Context:
    """Resolve the plan (profile first), then export (or reuse) the FP32 build."""
    from edgeq.frontend.export import ExportSettings, export_isolated

    profile, source, plan = resolve(opts)
    profile = for_family(profile, plan.weight_bits, plan.cpu_family)
    stages = StageCache(Path(plan.cache_dir), log)
    ensure_writable_dir(stages.root)
    ex = profile.export
    # a static UNet batch is the guidance batch: 2 with classifier-free guidance, 1 for Turbo (guidance
    # 0, 1) and LCM (guidance embedded in the UNet's timestep_cond input)
    from edgeq.runtime.pipeline import uses_cfg

    embedded = any(t.name == "timestep_cond" for t in source.spec.component("unet").inputs)
    batch = ex.batch if uses_cfg({"guidance": plan.guidance, "guidance_embedding_dim": embedded}) else 1
    settings = ExportSettings(opset=ex.opset, static=ex.static, batch=batch, height=plan.height, width=plan.width)
    folder = "fp32" + ("-static" if ex.static else "") + (f"-opset{ex.opset}" if ex.opset != 17 else "")
    if plan.height or plan.width:  # another resolution than the model's: its own export beside the default one
        folder += f"-{plan.height or 'h'}x{plan.width or 'w'}"
    with stages.timed("export_s"):
        res = export_isolated(source, stages.root / folder, settings, log=log)
    from edgeq.manifest import read_manifest

    return Context(opts, plan, source, profile, Export(res.folder, read_manifest(res.folder)), stages, cluster)
