"""Q/DQ insertion: the UNet as shared, per-group and gains graphs; single-group components.

Q/DQ nodes are inserted by ONNX Runtime's QDQQuantizer (:mod:`edgeq.quantize.insert`) with the
ranges the plan chose; each variant is a cached stage folder.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from edgeq.calibrate.capture import Capture
from edgeq.calibrate.collect import Stats
from edgeq.calibrate.grouping import Group
from edgeq.fsutil import save_onnx, write_json
from edgeq.quantize.gains import GAINS_FILE
from edgeq.quantize.insert import QDQ_VERSION
from edgeq.stages.calibration import ComponentStats, collect_stats
from edgeq.stages.context import Context
from edgeq.stages.mixed import float_shares, mixed_precision, unet_macs
from edgeq.stages.plan import ComponentPlan, UnetPlan, node_lists
from edgeq.stages.ranges import base_method, choose_ranges, make_groups, single_ranges, unet_ranges


@dataclass(frozen=True)
class QuantizedUnet:
    """The UNet's Q/DQ variants (folders in the cache) and the plan that made them."""

    groups: tuple[Group, ...]
    shared_dir: Path
    per_group_dir: Path | None
    plan: UnetPlan
    calibration: ComponentStats  # the statistics and decisions the graphs were made from (after splits, mixed)
    gains_dir: Path | None = None  # one graph, per-group scales through edgeq_gains (edgeq.quantize.gains)

    @property
    def group_dicts(self) -> list[dict]:
        return [g.to_dict() for g in self.groups]

    def graphs(self, mode: str) -> list[tuple[Path, dict]]:
        """The Q/DQ graphs of a variant with the group each serves (shared and gains: one graph)."""
        groups = self.group_dicts
        if mode == "per-group" and self.per_group_dir is not None:
            return [(self.per_group_dir / f"model.g{i}.onnx", g) for i, g in enumerate(groups)]
        if mode == "gains" and self.gains_dir is not None:
            return [(self.gains_dir / "model.onnx", groups[0])]
        return [(self.shared_dir / "model.onnx", groups[0])]

    def runner(self, mode: str, make):
        """A variant run by ``make(graphs)``, fed its gains row per call where it is the gains graph."""
        from edgeq.runtime.sessions import GainsRunner

        r = make(self.graphs(mode))
        return GainsRunner(r, self.plan.gains) if mode == "gains" and self.gains_dir is not None else r

    def to_dict(self) -> dict:
        def path(p: Path | None) -> str | None:
            return None if p is None else str(p)

        return {
            "groups": self.group_dicts,
            "shared_dir": str(self.shared_dir),
            "per_group_dir": path(self.per_group_dir),
            "plan": self.plan.to_dict(),
            "calibration": self.calibration.to_dict(),
            "gains_dir": path(self.gains_dir),
        }

    @classmethod
    def from_dict(cls, d: dict) -> QuantizedUnet:
        def path(p: str | None) -> Path | None:
            return None if p is None else Path(p)

        return cls(
            tuple(Group(g["index"], tuple(g["steps"]), g["t_min"], g["t_max"]) for g in d["groups"]),
            Path(d["shared_dir"]),
            path(d["per_group_dir"]),
            UnetPlan.from_dict(d["plan"]),
            ComponentStats.from_dict(d["calibration"]),
            path(d["gains_dir"]),
        )


def quantize_component(fp32_path: Path, decisions, policy, ranges: dict[str, tuple[float, float]], dst: Path) -> None:
    """The Q/DQ graph of the FP32 graph at ``fp32_path`` for one set of activation ranges, saved at
    ``dst`` (weights in ``<name>_data`` beside it). Plain inputs, no build context: the stages
    below and the tools that quantize a bare graph (``tools/bench_sd15_unet.py``) both call it."""
    from edgeq.quantize.insert import quantize_graph

    save_onnx(quantize_graph(fp32_path, list(decisions), policy, ranges), dst)


def write_qdq(fp32_path: Path, decisions, policy, ranges, dst: Path, isolate: bool | None = None) -> None:
    """:func:`quantize_component`, in a child process for a large graph (:func:`edgeq.isolate.is_large`)."""
    from edgeq.isolate import run_for_graph

    run_for_graph(fp32_path, "Q/DQ insertion", quantize_component, fp32_path, decisions, policy, ranges, dst,
                  isolate=isolate)  # fmt: skip


def qdq_model(fp32_path: Path, decisions, policy, ranges, scratch: Path, isolate: bool | None = None):
    """The Q/DQ model (in memory) for one set of ranges; a large graph's is made in a child process
    (:func:`write_qdq`) and read back from ``scratch``, only its int8 weights and scales in memory here."""
    import shutil

    import onnx

    from edgeq.isolate import is_large
    from edgeq.quantize.insert import quantize_graph

    if not (isolate if isolate is not None else is_large(fp32_path)):
        return quantize_graph(fp32_path, list(decisions), policy, ranges)
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        write_qdq(fp32_path, decisions, policy, ranges, scratch / "model.onnx", isolate=True)
        return onnx.load(str(scratch / "model.onnx"), load_external_data=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def unet_source(ctx: Context, cal: ComponentStats, shared: dict, cap: Capture) -> tuple[Path, list, ComponentStats]:
    """The UNet graph to quantize: the FP32 export, or its shortcut-split copy (cached) where the
    profile splits Concat-fed Convs; the returned statistics then name the split Convs. Where the
    profile quantizes outputs, the split Convs' outputs get statistics of their own."""
    import onnx

    from edgeq.isolate import run_for_graph
    from edgeq.quantize.split import plan_splits, split_decisions, write_split

    fp32 = cal.source or ctx.export.path("unet")
    if not cal.policy.split_concat_convs:
        return fp32, [], cal
    graph = onnx.load(str(fp32), load_external_data=False).graph
    splits = plan_splits(graph, list(cal.decisions), shared, cal.policy.split_min_ratio)
    if not splits:
        return fp32, [], cal
    root = ctx.stages.folder(
        "split-unet",
        str(fp32),
        [s.to_dict() for s in splits],
        # the split holds the whole FP32 model: in a child for a large graph
        make=lambda tmp: run_for_graph(
            fp32, "splitting shortcut convolutions", write_split, fp32, splits, tmp / "model.onnx"
        ),  # fmt: skip
    )
    cal = replace(cal, decisions=tuple(split_decisions(list(cal.decisions), splits)))
    if cal.policy.output_quantization:
        out_of = {n.name: n.output[0] for n in graph.node}
        new = [f"{out_of[s.conv]}/split{k}" for s in splits for k in range(len(s.inputs))]
        limit = min(ctx.plan.calib_calls or len(cap), len(cap))
        lim = None if limit >= len(cap) else limit
        stats = ctx.stages.file(
            "stats-split", str(root), str(cap.folder), new, limit, suffix=".npz",
            make=lambda tmp: collect_stats(ctx, root / "model.onnx", new, cap, "unet", tmp, lim),
        )  # fmt: skip
        cal = cal.with_extra(Stats.load(stats))
    return root / "model.onnx", splits, cal


def quantize_unet(ctx: Context, cal: ComponentStats, cap: Capture, log=print) -> QuantizedUnet:
    """Groups, ranges, (splits, mixed precision,) and the shared, per-group and gains Q/DQ graphs."""
    import onnx

    from edgeq.quantize.insert import read_activation_qparams, save_group_graphs, weight_summary

    method = ctx.plan.range_method or cal.policy.range_method
    groups = make_groups(ctx, cal.stats)
    gd = [g.to_dict() for g in groups]
    known = choose_ranges(cal, groups, base_method(method))
    fp32, splits, cal = unet_source(ctx, cal, known[1], cap)
    per_group, shared, range_choice = unet_ranges(ctx, cal, groups, cap, fp32, method, log, known)
    mixed = None
    if ctx.plan.goal_sqnr_db is not None:
        decisions, mixed = mixed_precision(ctx, cal, groups, shared, cap, fp32, log)
        cal = replace(cal, decisions=decisions)
    decisions = list(cal.decisions)

    def make(tmp: Path) -> None:
        from edgeq.progress import progress
        from edgeq.quantize.insert import group_model

        # a bar over the graphs: ONNX Runtime's quantizer takes minutes at SDXL size for the shared
        # one; the groups' are derived from it (seconds), or quantized again where they cannot be
        n = 1 + (len(groups) if len(groups) > 1 else 0)
        ticks = progress(range(n), desc="Q/DQ unet", unit="graph", knob="--groups")
        next(ticks)
        write_qdq(fp32, decisions, cal.policy, shared, tmp / "shared" / "model.onnx")
        if len(groups) > 1:
            base = onnx.load(str(tmp / "shared" / "model.onnx"), load_external_data=True)

            def group_graph(g: int):
                next(ticks)
                model = group_model(base, fp32, decisions, cal.policy, shared, per_group[g])
                if model is None:
                    log(
                        f"Q/DQ unet: group {g}'s graph quantized by ONNX Runtime again (not derivable: a bias near the int32 limit)"
                    )
                    return qdq_model(fp32, decisions, cal.policy, per_group[g], tmp / ".scratch")
                return model

            save_group_graphs(group_graph, len(groups), tmp / "per-group")
            del base
        for _ in ticks:  # closes the bar
            pass

    with ctx.stages.timed("quantize_unet_s"):
        root = ctx.stages.folder(
            "quant-unet", QDQ_VERSION, ctx.export.key, asdict(cal.policy), method, gd, shared, per_group,
            [asdict(d) for d in decisions], str(fp32), make=make,
        )  # fmt: skip
    shared_model = onnx.load(str(root / "shared" / "model.onnx"), load_external_data=True)
    shared_q = read_activation_qparams(shared_model, list(cal.tensors))
    per_dir = root / "per-group" if len(groups) > 1 else None
    group_q = (
        [shared_q]
        if per_dir is None
        else [
            read_activation_qparams(
                onnx.load(str(per_dir / f"model.g{g}.onnx"), load_external_data=False), list(cal.tensors)
            )
            for g in range(len(groups))
        ]
    )
    gains_dir, gains = None, None
    c = ctx.profile.calibration
    mode = ctx.plan.group_mode
    if per_dir is not None and (mode == "gains" or (mode == "auto" and c.group_gains and c.auto_gains)):
        gains_dir = ctx.stages.folder(
            "gains-unet", str(root), c.gains_min_bits, *([] if c.gains_attention else ["no attention"]),
            make=lambda tmp: write_gains_graph(
                shared_model, cal, per_group, gd, tmp, c.gains_min_bits, c.gains_attention
            ),
        )  # fmt: skip
        gains = {"graph": "gains/model.onnx", **_read_json(gains_dir / GAINS_FILE)}
    plan = UnetPlan(
        component="unet",
        range_method=method,
        policy=asdict(cal.policy),
        groups=gd,
        activations=UnetPlan.activations_of(cal.tensors, shared, shared_q, per_group, group_q),
        weights=weight_summary(shared_model),
        float_macs=float_shares(decisions, *unet_macs(ctx, cal, cap, fp32)),
        mixed_precision=mixed,
        splits=[x.to_dict() for x in splits],
        smoothquant=cal.smoothing,
        range_choice=range_choice,
        **node_lists(decisions),
        gains=gains,
    )
    return QuantizedUnet(
        tuple(groups), root / "shared", per_dir, plan, replace(cal, decisions=tuple(decisions)), gains_dir
    )


def _read_json(path: Path):
    import json

    return json.loads(path.read_text())


def write_gains_graph(
    shared_model,
    cal: ComponentStats,
    per_group: list[dict],
    groups: list[dict],
    dst: Path,
    min_bits: float = 0.0,
    attention: bool = True,
) -> None:
    """The shared Q/DQ graph with group gains on the tensors whose groups differ by ``min_bits`` or
    more (none on the attention cores' tensors unless ``attention``: see
    :func:`edgeq.quantize.gains.attention_tensors`), and its ``gains.json``."""
    from edgeq.quantize.gains import add_gains, attention_tensors, gain_table
    from edgeq.quantize.insert import read_activation_qparams

    p = cal.policy
    fixed = read_activation_qparams(shared_model, list(cal.tensors))
    hold = frozenset() if attention else attention_tensors(shared_model)
    gains = gain_table(fixed, per_group, p.activation_type, p.activation_symmetric, groups, min_bits, hold)
    save_onnx(add_gains(copy.deepcopy(shared_model), gains.tensors), dst / "model.onnx")
    write_json(dst / GAINS_FILE, gains.to_dict())


def quantize_single(ctx: Context, cal: ComponentStats) -> tuple[Path, ComponentPlan]:
    """A component calibrated as one group (the VAE decoder)."""
    import onnx

    from edgeq.quantize.insert import read_activation_qparams, weight_summary

    method = ctx.plan.range_method or cal.policy.range_method
    if method == "auto":  # measured per tensor class on the UNet only; here the profile's fixed method
        method = base_method(cal.policy.range_method)
    ranges = single_ranges(cal, method)
    fp32 = ctx.export.path(cal.name)
    root = ctx.stages.folder(
        f"quant-{cal.name}", QDQ_VERSION, ctx.export.key, asdict(cal.policy), method, ranges,
        make=lambda tmp: quantize_component(fp32, cal.decisions, cal.policy, ranges, tmp / "model.onnx"),
    )  # fmt: skip
    model = onnx.load(str(root / "model.onnx"), load_external_data=True)
    q = read_activation_qparams(model, list(cal.tensors))
    plan = ComponentPlan.make(cal.name, method, asdict(cal.policy), ranges, q, weight_summary(model), cal.decisions)
    return root, plan
