"""TensorRT's explicit-quantization rules, checked node by node on the ONNX graph (no GPU needed).

TensorRT accepts almost any Q/DQ graph, but one that breaks these rules builds into an engine that
is slower than FP16 (fusions lost, reformatting layers added) or does not build at all. Written by
hand because no library checks them: the rules come from TensorRT's developer guide on explicit
quantization and from Model Optimizer's ONNX quantizer (see ``../shared/field-notes.md``).

Each violation names the rule, the node and what to change.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

QUANTIZABLE = ("Conv", "ConvTranspose", "MatMul", "Gemm")
INT8_TYPES = (onnx.TensorProto.INT8,)
RULES = {
    "zero-point": "INT8 zero points must be 0 (symmetric) and of type int8",
    "constant-scale": "scales and zero points must be build-time constants, finite and > 0",
    "per-tensor-activation": "activations are quantized per tensor (one scale)",
    "weight-axis": "per-channel weight scales run along the output channels",
    "qdq-on-inputs": "Q/DQ only on the inputs of Conv / ConvTranspose / MatMul / Gemm",
    "residual-add": "no Q/DQ between a conv and the residual Add it feeds (breaks the conv+add fusion)",
    "concat-scales": "all quantized inputs of a Concat share one scale",
    "attention-float": "attention score/value matmuls and Softmax stay in FP16",
    "excluded-node": "nodes the profile excludes carry no Q/DQ",
}


@dataclass(frozen=True)
class Violation:
    rule: str
    node: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.node}: {self.detail}"


def _const_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    vals = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    vals[n.output[0]] = numpy_helper.to_array(a.t)
    return vals


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def validate(model: onnx.ModelProto, exclude_patterns: tuple[str, ...] = ()) -> list[Violation]:
    """Every violation of TensorRT's Q/DQ rules in ``model`` (an empty list: the graph is clean)."""
    g = model.graph
    consts = _const_values(g)
    prod = {o: n for n in g.node for o in n.output}
    cons: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            cons[i].append(n)
    out: list[Violation] = []

    def const_source(name: str) -> bool:
        """An initializer, a Constant, or a chain of Identity/Cast/Reshape/Transpose over one."""
        seen = 0
        while name not in consts and name in prod and seen < 8:
            p = prod[name]
            if p.op_type not in ("Identity", "Cast", "Reshape", "Transpose", "Unsqueeze"):
                return False
            name, seen = p.input[0], seen + 1
        return name in consts

    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale_name = n.input[1] if len(n.input) > 1 else ""
        zp_name = n.input[2] if len(n.input) > 2 else ""
        # constant scale and zero point
        if scale_name not in consts:
            out.append(Violation("constant-scale", n.name, f"scale '{scale_name}' is computed at run time"))
            continue
        scale = consts[scale_name].astype(np.float64)
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            out.append(
                Violation("constant-scale", n.name, f"scale has non-finite or non-positive values ({scale.min():.3g})")
            )
        if zp_name and zp_name not in consts:
            out.append(Violation("constant-scale", n.name, f"zero point '{zp_name}' is computed at run time"))
        elif zp_name:
            zp = consts[zp_name]
            if zp.dtype != np.int8 and not str(zp.dtype).startswith("float8"):
                out.append(
                    Violation("zero-point", n.name, f"zero point type {zp.dtype} (TensorRT INT8 is signed int8)")
                )
            if np.any(zp.astype(np.int64) != 0):
                out.append(
                    Violation("zero-point", n.name, f"zero point {zp.ravel()[:4].tolist()} is not 0 (asymmetric)")
                )
        else:
            out.append(Violation("zero-point", n.name, "no zero point input: the output type defaults to uint8"))
        is_weight = n.op_type == "DequantizeLinear" and const_source(n.input[0])
        if not is_weight and scale.size > 1:
            out.append(
                Violation("per-tensor-activation", n.name, f"activation scale has {scale.size} values (per-channel)")
            )
        if is_weight and scale.size > 1:
            out += _weight_axis(n, scale.size, consts, cons)

    for n in g.node:
        if n.op_type != "DequantizeLinear":
            continue
        q = prod.get(n.input[0])
        src = prod.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        for c in cons[n.output[0]]:
            if c.op_type in QUANTIZABLE or c.op_type in ("QuantizeLinear",):
                continue
            if c.op_type == "Concat":
                continue  # judged below, with all its inputs
            if c.op_type == "Add" and src is not None and src.op_type in ("Conv", "ConvTranspose"):
                out.append(
                    Violation(
                        "residual-add",
                        c.name,
                        f"input from conv '{src.name}' passes through Q/DQ '{n.name}'; "
                        "let the conv write its output in float",
                    )
                )
                continue
            if c.op_type == "Softmax":
                out.append(Violation("attention-float", c.name, f"Softmax reads the dequantized '{n.output[0]}'"))
                continue
            out.append(
                Violation(
                    "qdq-on-inputs",
                    c.name,
                    f"{c.op_type} reads the dequantized '{n.output[0]}'; point it at the float tensor",
                )
            )

    for n in g.node:
        if n.op_type == "Concat":
            scales = set()
            for i in n.input:
                p = prod.get(i)
                if p is not None and p.op_type == "DequantizeLinear" and p.input[1] in consts:
                    scales.add(float(consts[p.input[1]].ravel()[0]))
            if len(scales) > 1:
                out.append(
                    Violation(
                        "concat-scales",
                        n.name,
                        f"{len(scales)} different input scales ({min(scales):.3g}..{max(scales):.3g}); "
                        "unify them, or split the consuming conv so each half keeps its own scale",
                    )
                )
        if n.op_type == "MatMul" and all(
            i in prod and prod[i].op_type == "DequantizeLinear" and not const_source(prod[i].input[0]) for i in n.input
        ):
            out.append(Violation("attention-float", n.name, "MatMul of two activations (attention) quantized to INT8"))
        if exclude_patterns and any(re.search(p, n.name) for p in exclude_patterns):
            if any(prod.get(i) is not None and prod[i].op_type == "DequantizeLinear" for i in n.input):
                out.append(
                    Violation("excluded-node", n.name, "the profile keeps this node in float, but it reads Q/DQ")
                )
    return out


def _weight_axis(dq: onnx.NodeProto, channels: int, consts, cons) -> list[Violation]:
    axis = _attr(dq, "axis", 1)
    out = []
    w = consts.get(dq.input[0])
    for c in cons[dq.output[0]]:
        if c.op_type not in QUANTIZABLE or c.input[1] != dq.output[0]:
            continue
        rank = w.ndim if w is not None else 2
        if c.op_type == "Conv":
            want = 0
        elif c.op_type == "ConvTranspose":
            want = 1
        elif c.op_type == "Gemm":
            want = 0 if _attr(c, "transB", 0) else 1
        else:  # MatMul: the weight is [..., K, N]; N is the output channel
            want = rank - 1
        got = axis if axis >= 0 else axis + rank
        if got != want:
            out.append(
                Violation(
                    "weight-axis",
                    dq.name,
                    f"per-channel axis {axis} for the weight of {c.op_type} '{c.name}' (TensorRT wants axis {want})",
                )
            )
        elif w is not None and w.shape[want] != channels:
            out.append(Violation("weight-axis", dq.name, f"{channels} scales for {w.shape[want]} output channels"))
    return out


def validate_file(path: Path, exclude_patterns: tuple[str, ...] = ()) -> list[Violation]:
    return validate(onnx.load(str(path), load_external_data=True), exclude_patterns)


def report(violations: list[Violation], limit: int = 50) -> str:
    """A readable summary: counts per rule, then one line per violation (the first ``limit``)."""
    if not violations:
        return "TensorRT Q/DQ rules: no violations\n"
    counts: dict[str, int] = defaultdict(int)
    for v in violations:
        counts[v.rule] += 1
    lines = [f"TensorRT Q/DQ rules: {len(violations)} violation(s)"]
    lines += [f"  {rule}: {k}  ({RULES[rule]})" for rule, k in sorted(counts.items())]
    lines += [f"  {v}" for v in violations[:limit]]
    if len(violations) > limit:
        lines.append(f"  ... and {len(violations) - limit} more")
    return "\n".join(lines) + "\n"
