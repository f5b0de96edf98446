"""Per-group activation scales in one graph ("group gains").

Hand-written: no quantization library deploys timestep-dependent scales without one graph per scale
set. The identity it uses: quantizing ``x`` with a group's scale ``s_g`` is quantizing
``x * (s / s_g)`` with a fixed scale ``s``, and an op that is linear in ``x`` (Conv, MatMul, Gemm)
gives the group's result when its output is multiplied by ``s_g / s`` before the bias is added::

    x -> Mul(g_in) -> Q(s, z) -> DQ(s, z) -> Conv (no bias) -> Mul(g_out) -> Add(bias) -> y

``g_in = s / s_g`` and ``g_out = s_g / s`` are read from one small graph input, ``edgeq_gains``
(``[g_in of every gained tensor..., g_out of every gained tensor...]``), whose values the runtime picks by the
call's timestep group from ``gains.json``. One graph and one set of weights serve every group on
every target. A DQ output that feeds anything other than a linear quantized op (a float reader of
a quantized op's output Q/DQ) is multiplied back by ``g_out`` on that edge.

Zero points cannot change at run time: an asymmetric tensor keeps the fixed graph's zero point
``z`` and each group gets the smallest scale whose grid ``[(qmin - z) s_g, (qmax - z) s_g]`` holds
the group's range. With symmetric activations (TensorRT) a gained tensor is quantized exactly as in
the per-group graph; :func:`reference_ranges` gives the ranges of the per-group graphs the gains graph
is exactly equivalent to when every tensor is gained (``gains_min_bits = 0``). Tensors whose groups
differ by less than ``min_bits`` (:func:`gain_table`) keep the fixed graph's scale in every group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeq.quantize.policy import constant_names

GAINS_INPUT = "edgeq_gains"
GAINS_FILE = "gains.json"
LINEAR = {"Conv": (0,), "MatMul": (0, 1), "Gemm": (0,)}  # op type -> inputs it is linear in (with a gain)
# ops that give a constant when every input is one (a weight's Q/DQ, layout and type changes)
_PASS_THROUGH = (
    "QuantizeLinear",
    "DequantizeLinear",
    "Transpose",
    "Cast",
    "Identity",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
)
_ONNX_TYPES = {
    "uint8": TensorProto.UINT8,
    "int8": TensorProto.INT8,
    "uint16": TensorProto.UINT16,
    "int16": TensorProto.INT16,
}


@dataclass(frozen=True)
class Gains:
    """What the runtime needs: the gained tensors in input order and one row of gains per group."""

    tensors: tuple[str, ...]
    table: tuple[tuple[float, ...], ...]  # [group][g_in..., g_out...]
    groups: tuple[dict, ...]
    candidates: int = 0  # activation tensors that could take a gain (``tensors`` are those that do)
    min_bits: float = 0.0  # the spread a tensor's groups needed to take one
    fallback: bool = False  # no tensor reached ``min_bits``: the one whose groups differ most is kept
    held_back: int = 0  # candidates never gained (attention cores' tensors, ``gains_attention = false``)

    def row(self, group: int) -> np.ndarray:
        return np.asarray(self.table[group], np.float32)

    def to_dict(self) -> dict:
        return {
            "input": GAINS_INPUT,
            "tensors": list(self.tensors),
            "groups": list(self.groups),
            "table": [list(r) for r in self.table],
            "candidates": self.candidates,
            "min_bits": self.min_bits,
            "fallback": self.fallback,
            "held_back": self.held_back,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Gains:
        rows = tuple(tuple(r) for r in d["table"])
        tensors = tuple(d["tensors"])  # written before min_bits: every candidate gained
        extra = (
            d.get("candidates", len(tensors)),
            d.get("min_bits", 0.0),
            d.get("fallback", False),
            d.get("held_back", 0),
        )
        return cls(tensors, rows, tuple(d["groups"]), *extra)


def _limits(qtype: str, symmetric: bool) -> tuple[int, int]:
    """ONNX Runtime's integer grid for a type (symmetric int8 is -127..127)."""
    from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

    qmin, qmax = get_qmin_qmax_for_qType(_ONNX_TYPES[qtype], symmetric=symmetric)
    return int(qmin), int(qmax)


def group_scale(rng: tuple[float, float], zp: int, qtype: str, symmetric: bool) -> float:
    """The smallest scale whose grid around the fixed zero point ``zp`` holds ``rng``.

    Symmetric: ONNX Runtime's own ``compute_scale_zp`` (zero point 0), so a gained tensor is
    quantized exactly as the per-group graph quantizes it.
    """
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    qmin, qmax = _limits(qtype, symmetric)
    lo, hi = min(float(rng[0]), 0.0), max(float(rng[1]), 0.0)
    if symmetric:
        s = float(compute_scale_zp(np.float32(lo), np.float32(hi), np.int32(qmin), np.int32(qmax), symmetric=True)[1])
    else:
        s = max(hi / (qmax - zp) if qmax > zp else 0.0, -lo / (zp - qmin) if zp > qmin else 0.0)
    return float(s) if s > 0 else 1.0


def gain_table(
    fixed: dict[str, tuple[float, int]],
    per_group: list[dict[str, tuple[float, float]]],
    qtype: str,
    symmetric: bool,
    groups: list[dict],
    min_bits: float = 0.0,
    hold_back: frozenset[str] | set[str] = frozenset(),
) -> Gains:
    """Gains of the tensors with fixed Q/DQ parameters ``fixed`` (scale, zero point) per group.

    ``min_bits``: only tensors where some group's scale is at least that many bits finer or coarser
    than the fixed one (``|log2(s / s_g)|``) take a gain; the others keep the fixed scale in every
    group and cost nothing at run time. A scale ``b`` bits too coarse costs that tensor about
    ``6.02 b`` dB of quantization SNR, and each gained tensor costs elementwise multiplies on a
    runtime that cannot fold them (OpenVINO: 2,043 Multiply layers in an SDXL-shaped UNet where 90%
    of the tensors' groups differ by under 0.1 bit). At least one tensor is kept (the one whose
    groups differ most), so the graph keeps its gains input.

    ``hold_back``: candidates that never take a gain, whatever their spread (see
    :func:`attention_tensors`); they count as candidates and keep the fixed scale. Should every
    candidate be held back, the one whose groups differ most is kept all the same (``fallback``)."""
    tensors = [t for t in fixed if all(t in r for r in per_group)]
    candidates = len(tensors)
    scales = {t: [group_scale(ranges[t], fixed[t][1], qtype, symmetric) for ranges in per_group] for t in tensors}
    spread = {t: max(abs(float(np.log2(fixed[t][0] / sg))) for sg in scales[t]) for t in tensors}
    eligible = [t for t in tensors if t not in hold_back]
    kept = [t for t in eligible if spread[t] >= min_bits] if min_bits > 0 else eligible
    fallback = bool(tensors) and not kept
    if fallback:
        kept = [max(eligible or tensors, key=lambda t: spread[t])]
    held = sum(t not in kept for t in tensors if t in hold_back)
    tensors = kept
    rows = []
    for g in range(len(per_group)):
        g_in, g_out = [], []
        for t in tensors:
            s, sg = fixed[t][0], scales[t][g]
            g_in.append(float(np.float32(s / sg)))
            g_out.append(float(np.float32(sg / s)))
        rows.append(tuple(g_in + g_out))
    return Gains(tuple(tensors), tuple(rows), tuple(groups), candidates, float(min_bits), fallback, held)


def attention_tensors(model: onnx.ModelProto) -> set[str]:
    """The tensors of a Q/DQ graph's attention cores: the outputs of the MatMuls whose two inputs are
    both activations (Q.K^T, P.V) and of Softmax, and the quantized activations those MatMuls read
    (Q, K^T, V as they enter).

    OpenVINO's CPU plugin runs each attention (MatMul, Softmax, MatMul with their FakeQuantize) as one
    fused int8 subgraph. A gain on the scores, probabilities or context puts Multiply layers inside
    that pattern and the plugin falls back to separate MatMul, Multiply and f32 Softmax layers (8 of
    tiny-sd's 14 attentions with gains at 0.1 bit); a gain on Q, K or V alone keeps the fusion but
    the fused kernel then departs from the exact Q/DQ arithmetic (tiny-lcm, 4 steps: 1.33 dB kernel
    gap in one step, against 0.00 with no gain in the core)."""
    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    const = constant_names(g, _PASS_THROUGH)  # weights, however reshaped and quantized

    def source(x: str) -> tuple[str, bool]:
        """What a MatMul input carries: the float tensor its Q/DQ pair quantizes, and whether it is
        quantized (a DQ of a Q)."""
        n = prod.get(x)
        if n is not None and n.op_type == "DequantizeLinear":
            q = prod.get(n.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                return q.input[0], True
        return x, False

    out = set()
    for n in g.node:
        if n.op_type == "Softmax":
            out.add(n.output[0])
        elif n.op_type == "MatMul" and not any(x in const for x in n.input[:2]):
            srcs = [source(x) for x in n.input[:2]]
            out.add(n.output[0])
            out |= {x for x, quantized in srcs if quantized}
    return out


def reference_ranges(
    fixed: dict[str, tuple[float, int]], per_group: list[dict[str, tuple[float, float]]], qtype: str, symmetric: bool
) -> list[dict[str, tuple[float, float]]]:
    """Ranges for which ONNX Runtime's quantizer writes each group's graph with exactly the gained
    scales and the fixed zero points: the per-group graphs the gains graph equals."""
    qmin, qmax = _limits(qtype, symmetric)
    out = []
    for ranges in per_group:
        r = {}
        for t, (_, z) in fixed.items():
            if t not in ranges:
                continue
            sg = group_scale(ranges[t], z, qtype, symmetric)
            r[t] = (
                ((qmin - z) * sg, (qmax - z) * sg)
                if not symmetric
                else (-sg * (qmax - qmin) / 2, sg * (qmax - qmin) / 2)
            )
        out.append(r)
    return out


def _const(arr: np.ndarray, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(arr, name)


def _float_bias(name: str, inits: dict, prod: dict) -> np.ndarray:
    """The float value of a quantized op's bias: a constant, or a DequantizeLinear of one."""
    if name in inits:
        return numpy_helper.to_array(inits[name]).astype(np.float32)
    dq = prod.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
        raise ValueError(f"bias {name} is neither a constant nor a DequantizeLinear of one")
    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    zp = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] else 0.0
    return ((q - zp) * scale).astype(np.float32)


def _weight_rank(name: str, inits: dict, prod: dict) -> int:
    """Rank of a Conv weight: a constant, or behind DequantizeLinear (and QuantizeLinear) of one."""
    while name not in inits:
        name = prod[name].input[0]
    return len(inits[name].dims)


def add_gains(model: onnx.ModelProto, tensors: tuple[str, ...]) -> onnx.ModelProto:
    """Rewrite a Q/DQ graph so the activations ``tensors`` take their scales from ``edgeq_gains``.

    ``tensors`` are activation names whose QuantizeLinear reads them (ONNX Runtime's quantizer
    names their Q/DQ ``<t>_QuantizeLinear`` / ``<t>_DequantizeLinear``). The model is changed in
    place and returned; nodes stay in topological order.
    """
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    index = {t: k for k, t in enumerate(tensors)}
    k_all = len(tensors)
    q_of: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in index:
            q_of.setdefault(n.input[0], []).append(n)
    missing = [t for t in tensors if t not in q_of]
    if missing:
        raise ValueError(f"no QuantizeLinear reads {missing[:3]}")
    dq_tensor = {}  # DQ output -> gained tensor
    for t, qs in q_of.items():
        q_outs = {q.output[0] for q in qs}
        for n in g.node:
            if n.op_type == "DequantizeLinear" and n.input[0] in q_outs:
                dq_tensor[n.output[0]] = t

    head: list[onnx.NodeProto] = []  # the gathers of the gains, first in the graph

    def gain(t: str, side: str) -> str:
        name = f"{t}/edgeq_gain_{side}"
        if name not in made:
            k = index[t] + (k_all if side == "out" else 0)
            inits_new.append(_const(np.array(k, np.int64), f"{name}/index"))
            head.append(helper.make_node("Gather", [GAINS_INPUT, f"{name}/index"], [name], name=name, axis=0))
            made.add(name)
        return name

    made: set[str] = set()
    inits_new: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    ungained: dict[str, str] = {}  # DQ output -> its value multiplied back (for non-linear readers)
    for n in g.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in index:
            t = n.input[0]
            scaled = f"{t}/edgeq_gained"
            if scaled not in made:
                nodes.append(helper.make_node("Mul", [t, gain(t, "in")], [scaled], name=f"{t}/edgeq_gain_in_mul"))
                made.add(scaled)
            n.input[0] = scaled
            nodes.append(n)
            continue
        gained_inputs = [(i, x) for i, x in enumerate(n.input) if x in dq_tensor]
        linear = LINEAR.get(n.op_type, ())
        ok = gained_inputs and all(i in linear for i, _ in gained_inputs)
        if n.op_type == "Gemm" and ok:
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            ok = not attrs.get("transA", 0)
        if not ok:
            for i, x in gained_inputs:  # a float reader: give it the group's value back
                if x not in ungained:
                    ungained[x] = f"{x}/edgeq_ungained"
                    nodes.append(
                        helper.make_node(
                            "Mul", [x, gain(dq_tensor[x], "out")], [ungained[x]], name=f"{x}/edgeq_ungain_mul"
                        )
                    )
                n.input[i] = ungained[x]
            nodes.append(n)
            continue
        outs = [gain(dq_tensor[x], "out") for _, x in gained_inputs]
        out_gain = outs[0]
        if len(outs) == 2:
            out_gain = f"{n.name}/edgeq_gain_out"
            nodes.append(helper.make_node("Mul", outs, [out_gain], name=f"{n.name}/edgeq_gain_out_mul"))
        y = n.output[0]
        bias = None
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[2]:
            b = _float_bias(n.input[2], inits, prod)
            if n.op_type == "Conv":
                b = b.reshape([-1] + [1] * (_weight_rank(n.input[1], inits, prod) - 2))
            else:
                beta = next((a.f for a in n.attribute if a.name == "beta"), 1.0)
                b = b * np.float32(beta)
            bias = f"{n.name}/edgeq_bias"
            inits_new.append(_const(b.astype(np.float32), bias))
            del n.input[2]
        raw, scaled = f"{y}/edgeq_raw", f"{y}/edgeq_scaled" if bias else y
        n.output[0] = raw
        nodes.append(n)
        nodes.append(helper.make_node("Mul", [raw, out_gain], [scaled], name=f"{n.name}/edgeq_gain_out_apply"))
        if bias:
            nodes.append(helper.make_node("Add", [scaled, bias], [y], name=f"{n.name}/edgeq_bias_add"))
    del g.node[:]
    g.node.extend(
        _toposort(
            head + nodes, {i.name for i in g.input} | {i.name for i in g.initializer} | set(i.name for i in inits_new)
        )
    )
    g.initializer.extend(inits_new)
    g.input.append(helper.make_tensor_value_info(GAINS_INPUT, TensorProto.FLOAT, [2 * k_all]))
    _drop_unused(g)
    return model


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Nodes in an order where each reads only what is already computed (ORT's quantizer appends
    its Q/DQ nodes at the end of the graph, which ONNX Runtime accepts but the checker does not)."""
    import heapq

    prod = {o: k for k, n in enumerate(nodes) for o in n.output}
    waits = [0] * len(nodes)
    readers: dict[int, list[int]] = {}
    for k, n in enumerate(nodes):
        for x in {x for x in n.input if x and x not in available and x in prod}:
            waits[k] += 1
            readers.setdefault(prod[x], []).append(k)
    ready = [k for k in range(len(nodes)) if waits[k] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(nodes[k])
        for r in readers.get(k, ()):
            waits[r] -= 1
            if waits[r] == 0:
                heapq.heappush(ready, r)
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle")
    return order


def _drop_unused(g: onnx.GraphProto) -> None:
    """Initializers no node reads any more (the int32 biases replaced by float ones)."""
    used = {x for n in g.node for x in n.input}
    keep = [i for i in g.initializer if i.name in used]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)
