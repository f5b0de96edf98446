"""Shortcut splitting: a Conv reading a channel Concat becomes one Conv per Concat input, plus Adds.

In the UNet's up blocks each resnet reads ``Concat(upsampled, skip)``; the skip half and the
upsampled half often differ in range by several times, and one int8 scale for both leaves the
smaller half a few steps. ``Conv(Concat(a, b), W) = Conv(a, W[:, :Ca]) + Conv(b, W[:, Ca:])``
(bias on the first), exactly, so each half gets its own activation scale. The Add of two convs is
the form TensorRT and OpenVINO fuse into the second conv. A split is made only where the measured
ranges of the halves differ by at least ``split_min_ratio``; elsewhere one scale costs nothing.

Hand-written: onnx-ir / onnxscript have no rule for it, and it needs edgeq's statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeq.fsutil import save_onnx
from edgeq.quantize.policy import Decision


@dataclass(frozen=True)
class Split:
    conv: str  # the original Conv node
    inputs: tuple[str, ...]  # the Concat's inputs, in order
    ratio: float  # largest over smallest |range| of the halves

    @property
    def new_convs(self) -> tuple[str, ...]:
        return tuple(f"{self.conv}/split{k}" for k in range(len(self.inputs)))

    def to_dict(self) -> dict:
        return {"conv": self.conv, "inputs": list(self.inputs), "ratio": self.ratio, "new_convs": list(self.new_convs)}


def concat_convs(graph: onnx.GraphProto, decisions: list[Decision]) -> dict[str, tuple[str, ...]]:
    """Quantized, ungrouped Convs whose input is a Concat along channels: conv name -> concat inputs."""
    prod = {o: n for n in graph.node for o in n.output}
    chosen = {d.node for d in decisions if d.quantized}
    out = {}
    for n in graph.node:
        if n.op_type != "Conv" or n.name not in chosen:
            continue
        if next((a.i for a in n.attribute if a.name == "group"), 1) != 1:
            continue
        c = prod.get(n.input[0])
        if c is not None and c.op_type == "Concat" and next(a.i for a in c.attribute if a.name == "axis") in (1, -3):
            out[n.name] = tuple(c.input)
    return out


def plan_splits(
    graph: onnx.GraphProto,
    decisions: list[Decision],
    ranges: dict[str, tuple[float, float]],
    min_ratio: float,
) -> list[Split]:
    """The Concat-fed Convs worth splitting: their halves' ranges differ by ``min_ratio`` or more."""
    splits = []
    for conv, ins in concat_convs(graph, decisions).items():
        if not all(t in ranges for t in ins):
            continue
        amax = [max(abs(ranges[t][0]), abs(ranges[t][1]), 1e-12) for t in ins]
        ratio = max(amax) / min(amax)
        if ratio >= min_ratio:
            splits.append(Split(conv, ins, float(ratio)))
    return splits


def split_model(model: onnx.ModelProto, splits: list[Split], shapes: dict[str, int]) -> onnx.ModelProto:
    """``model`` (weights loaded) with each planned Conv split (``shapes``: channels of the Concat inputs)."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    by_conv = {s.conv: s for s in splits}
    body, new_inits = [], []
    for n in g.node:
        s = by_conv.get(n.name)
        if s is None:
            body.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        attrs = list(n.attribute)
        start, outs = 0, []
        for k, t in enumerate(s.inputs):
            c = shapes[t]
            wk = numpy_helper.from_array(np.ascontiguousarray(w[:, start : start + c]), f"{n.input[1]}/split{k}")
            new_inits.append(wk)
            ins = [t, wk.name] + ([n.input[2]] if k == 0 and len(n.input) > 2 and n.input[2] else [])
            name = s.new_convs[k]
            out = f"{n.output[0]}/split{k}"
            conv = helper.make_node("Conv", ins, [out], name=name)
            conv.attribute.extend(attrs)
            body.append(conv)
            outs.append(out)
            start += c
        if start != w.shape[1]:
            raise RuntimeError(f"{n.name}: concat inputs have {start} channels, the weight {w.shape[1]}")
        acc = outs[0]
        for k, o in enumerate(outs[1:], 1):
            dst = n.output[0] if k == len(outs) - 1 else f"{n.output[0]}/sum{k}"
            body.append(helper.make_node("Add", [acc, o], [dst], name=f"{n.name}/add{k}"))
            acc = dst
    del g.node[:]
    g.node.extend(body)
    g.initializer.extend(new_inits)
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return model


def split_decisions(decisions: list[Decision], splits: list[Split]) -> list[Decision]:
    """The split Conv's decision replaced by one per new Conv, saying why."""
    by_conv = {s.conv: s for s in splits}
    out = []
    for d in decisions:
        s = by_conv.get(d.node)
        if s is None:
            out.append(d)
            continue
        reason = f"Conv on a Concat split per input: the halves' ranges differ {s.ratio:.1f}x, each gets its own scale"
        out += [Decision(name, d.op_type, d.quantized, reason) for name in s.new_convs]
    return out


def channel_counts(model: onnx.ModelProto, tensors: set[str]) -> dict[str, int]:
    """Channel count (dim 1) of each tensor, by ONNX shape inference (weights need not be loaded)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    vis = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    out = {}
    for v in vis:
        if v.name in tensors:
            dims = v.type.tensor_type.shape.dim
            if len(dims) > 1 and dims[1].HasField("dim_value"):
                out[v.name] = dims[1].dim_value
    missing = tensors - set(out)
    if missing:
        raise RuntimeError(f"channel counts unknown after shape inference: {sorted(missing)[:3]}")
    return out


def write_split(fp32_path: Path, splits: list[Split], dst: Path) -> None:
    """Save the split graph of ``fp32_path`` at ``dst`` (weights in one external file beside it)."""
    light = onnx.load(str(fp32_path), load_external_data=False)
    shapes = channel_counts(light, {t for s in splits for t in s.inputs})
    del light
    model = onnx.load(str(fp32_path), load_external_data=True)
    model = split_model(model, splits, shapes)
    save_onnx(model, dst)
