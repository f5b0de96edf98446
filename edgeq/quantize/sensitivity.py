"""Layer sensitivity and mixed precision to a quality goal.

Hand-written: no library measures what quantizing one node of a diffusion UNet costs per timestep
group, or picks the fewest float nodes that meet a goal. ONNX Runtime's ``qdq_loss_debug`` compares
tensors of a float and a Q/DQ model one by one; it does not isolate nodes.

How: one *switchable* copy of the FP32 graph fake-quantizes every candidate node in the target's
flavour (activation ranges from edgeq's statistics, per-channel symmetric weights, output
quantization where the profile has it), each behind its own gate::

    x' = x + g_i * (DQ(Q(x)) - x)        W' = W + g_i * (DQ(Q(W)) - W)

The gates are one graph input, so a single ONNX Runtime session evaluates any set of quantized
nodes: "only node i quantized", "all but node i", or a mixed-precision configuration. Activation
scales and zero points are graph inputs too, so each timestep group runs with its own ranges.
The numbers are a fake-quant simulation of the target's integer kernels; the build's checks then
measure the real graphs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tqdm import tqdm

from edgeq.calibrate.collect import augmented_session
from edgeq.calibrate.histogram import _qparams
from edgeq.profiles import ComponentPolicy
from edgeq.quantize.policy import Decision, constant_names

GATES = "edgeq_gates"
_NP = {"uint8": np.uint8, "int8": np.int8, "uint16": np.uint16, "int16": np.int16}
_ONNX = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8, "uint16": TensorProto.UINT16, "int16": TensorProto.INT16}


# -- cost ---------------------------------------------------------------------------------------
def count_macs(fp32_path: Path, feeds: dict[str, np.ndarray], nodes: Sequence[str]) -> dict[str, int]:
    """Multiply-accumulates of each Conv/MatMul/Gemm in ``nodes`` for one call with ``feeds``.

    Shapes come from ONNX Runtime's symbolic shape inference on the graph with the inputs' dims fixed
    to ``feeds`` (weights as inputs of their dims: no weight is read): 0.3 s and 0.3 GB on the SD1.5
    UNet, the same MACs as a run. Where it leaves a needed shape open, from one ONNX Runtime run
    with the nodes' outputs as extra graph outputs instead (10.9 GB on that UNet at batch 1: in a
    child process for a large graph).
    A dynamic-batch graph is counted at batch 1 (MACs scale with the batch; shares do not).
    """
    model = onnx.load(str(fp32_path), load_external_data=False)
    g = model.graph
    by_name = {n.name: n for n in g.node}
    wanted = [by_name[n] for n in nodes]
    shapes_of = {i.name: list(i.dims) for i in g.initializer}
    outs: list[str] = []
    for n in wanted:  # outputs, and the activation input only where the weight does not give K
        need = (n.output[0],) if n.input[1] in shapes_of and n.op_type != "Gemm" else (n.input[0], n.output[0])
        outs += [t for t in need if t not in outs]
    sample = feeds.get("sample")
    batch = sample.shape[0] if _dynamic_batch(g) and sample is not None and sample.ndim else 1
    feeds = {k: (v[:1] if v.ndim and v.shape[0] == batch else v) for k, v in feeds.items()} if batch > 1 else feeds
    got = symbolic_shapes(model, feeds, outs)
    if got is None:  # the graph's weights and every counted node's output: a child's memory for a large graph
        from edgeq.isolate import run_for_graph

        got = run_for_graph(Path(fp32_path), "counting the MACs", _run_shapes, fp32_path, feeds, outs)
    shape = {**shapes_of, **got}
    macs = {}
    for n in wanted:
        out = int(np.prod(shape[n.output[0]]))
        if n.op_type == "Conv":
            macs[n.name] = out * int(np.prod(shape[n.input[1]][1:]))  # Cin/groups * kh * kw per output element
        elif n.op_type == "Gemm":
            trans_a = next((a.i for a in n.attribute if a.name == "transA"), 0)
            macs[n.name] = out * shape[n.input[0]][0 if trans_a else -1]
        elif n.input[1] in shapes_of:
            macs[n.name] = out * shape[n.input[1]][-2]  # MatMul x[..., K] @ W[K, N]
        else:
            macs[n.name] = out * shape[n.input[0]][-1]
    return {k: v * batch for k, v in macs.items()}


def _dynamic_batch(g: onnx.GraphProto) -> bool:
    inp = next((i for i in g.input if i.name == "sample"), None)
    return inp is not None and not inp.type.tensor_type.shape.dim[0].HasField("dim_value")


def symbolic_shapes(model: onnx.ModelProto, feeds: dict[str, np.ndarray], names: list[str], partial: bool = False):
    """``{tensor: shape}`` for ``names`` by symbolic shape inference, or None where any is left open
    (``partial``: the ones it closes; None only where inference fails)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for i in g.input:
        if i.name in feeds:
            dims = i.type.tensor_type.shape.dim
            for k, v in enumerate(np.asarray(feeds[i.name]).shape[: len(dims)]):
                dims[k].Clear()
                dims[k].dim_value = int(v)
    small = []
    for init in g.initializer:  # weights stored outside: inputs of their dims (their bytes are not needed)
        if init.data_location == onnx.TensorProto.EXTERNAL:
            g.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            small.append(init)
    del g.initializer[:]
    g.initializer.extend(small)
    try:
        out = SymbolicShapeInference.infer_shapes(m, auto_merge=True)
    except Exception:  # an op it does not know, or a shape it cannot merge: the run decides
        return None
    info = {v.name: v for v in [*out.graph.value_info, *out.graph.output, *out.graph.input]}
    got = {}
    for name in names:
        v = info.get(name)
        dims = None
        if v is not None and v.type.tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        if dims is None or any(d is None or d < 0 for d in dims):
            if partial:
                continue
            return None
        got[name] = dims
    return got


def _run_shapes(fp32_path: Path, feeds: dict[str, np.ndarray], names: list[str]):
    """``{tensor: shape}`` from one ONNX Runtime run with ``names`` as extra outputs (no memory arena)."""
    sess = augmented_session(Path(fp32_path), names)
    inputs = {i.name for i in sess.get_inputs()}
    res = sess.run(names, {k: v for k, v in feeds.items() if k in inputs})
    del sess
    return {k: list(v.shape) for k, v in zip(names, res)}


# -- the switchable graph -----------------------------------------------------------------------
def _weight_axis(node: onnx.NodeProto) -> int:
    """The output-channel axis of a node's weight (per-channel quantization)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if next((a.i for a in node.attribute if a.name == "transB"), 0) else 1
    return -1  # MatMul [K, N]: one scale per output column


def fake_quant_weight(
    w: np.ndarray, axis: int | None, qtype: str, symmetric: bool, reduce_range: bool = False
) -> np.ndarray:
    """DQ(Q(w)) with per-channel (``axis``) or per-tensor ranges, as ORT's quantizer computes them
    (``reduce_range``: 7-bit weights, ORT's grid of -64..64 or 0..127)."""
    bits = 16 if "16" in qtype else 8
    signed = qtype.startswith("int")
    if reduce_range and bits == 8:
        from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

        rq = get_qmin_qmax_for_qType(_ONNX[qtype], reduce_range=True)
    if axis is None:
        lo, hi = np.array([w.min()]), np.array([w.max()])
        moved = w.reshape(1, -1)
    else:
        moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
        lo, hi = moved.min(axis=1), moved.max(axis=1)
    out = np.empty_like(moved)
    for c in range(moved.shape[0]):
        if reduce_range and bits == 8:
            zp_, s_ = compute_scale_zp(np.float32(lo[c]), np.float32(hi[c]), rq[0], rq[1], symmetric=symmetric)
            scale, zp, qmin, qmax = float(s_), int(zp_), int(rq[0]), int(rq[1])
        else:
            scale, zp, qmin, qmax = _qparams(float(lo[c]), float(hi[c]), symmetric, bits)
        if not signed and symmetric and not reduce_range:
            qmin, qmax = 0, 2**bits - 1
        q = np.clip(np.round(moved[c] / scale) + zp, qmin, qmax)
        out[c] = (q - zp) * scale
    if axis is None:
        return out.reshape(w.shape).astype(w.dtype)
    moved_shape = (w.shape[axis],) + tuple(np.delete(np.array(w.shape), axis))
    return np.moveaxis(out.reshape(moved_shape), 0, axis).astype(w.dtype)


@dataclass
class Switchable:
    """The switchable fake-quant model and what its inputs mean."""

    model: onnx.ModelProto
    nodes: list[str]  # gate i belongs to nodes[i]
    tensors: list[str]  # activations with a scale/zero-point input each
    act_type: str

    def qparam_feeds(self, ranges: dict[str, tuple[float, float]], symmetric: bool) -> dict[str, np.ndarray]:
        bits = 16 if "16" in self.act_type else 8
        feeds = {}
        for t in self.tensors:
            scale, zp, _, _ = _qparams(*ranges[t], symmetric, bits)
            feeds[f"edgeq_scale/{t}"] = np.array(scale, np.float32)
            feeds[f"edgeq_zp/{t}"] = np.array(zp, _NP[self.act_type])
        return feeds


def switchable_model(fp32_path: Path, decisions: list[Decision], policy: ComponentPolicy) -> Switchable:
    """Every quantized node of ``decisions`` fake-quantized behind its own gate (module docstring)."""
    model = onnx.load(str(fp32_path), load_external_data=True)
    g = model.graph
    const = constant_names(g)
    inits = {i.name: i for i in g.initializer}
    chosen = [d.node for d in decisions if d.quantized]
    index = {n: i for i, n in enumerate(chosen)}
    act_type = policy.activation_type
    new_inits: list[onnx.TensorProto] = []
    declared: list[str] = []  # activations with scale / zero-point inputs
    fq: dict[str, str] = {}  # activation -> its fake-quantized copy

    def qparams(t: str) -> tuple[str, str]:
        s, z = f"edgeq_scale/{t}", f"edgeq_zp/{t}"
        if t not in declared:
            declared.append(t)
            g.input.extend(
                [
                    helper.make_tensor_value_info(s, TensorProto.FLOAT, []),
                    helper.make_tensor_value_info(z, _ONNX[act_type], []),
                ]
            )
        return s, z

    def qdq(x: str, t: str, out: str) -> list[onnx.NodeProto]:
        """out = DQ(Q(x)) with the scale and zero point of activation ``t``."""
        s, z = qparams(t)
        return [
            helper.make_node("QuantizeLinear", [x, s, z], [f"{out}/q"]),
            helper.make_node("DequantizeLinear", [f"{out}/q", s, z], [out]),
        ]

    def mix(x: str, x_q: str, gate: str, out: str) -> list[onnx.NodeProto]:
        """out = x + gate * (x_q - x)"""
        return [
            helper.make_node("Sub", [x_q, x], [f"{out}/d"]),
            helper.make_node("Mul", [gate, f"{out}/d"], [f"{out}/gd"]),
            helper.make_node("Add", [x, f"{out}/gd"], [out]),
        ]

    g.input.append(helper.make_tensor_value_info(GATES, TensorProto.FLOAT, [len(chosen)]))
    body: list[onnx.NodeProto] = []
    for n in g.node:
        if n.name not in index:
            body.append(n)
            continue
        i = index[n.name]
        gate = f"edgeq_gate/{i}"
        new_inits.append(numpy_helper.from_array(np.array(i, np.int64), f"{gate}/index"))
        body.append(helper.make_node("Gather", [GATES, f"{gate}/index"], [gate], axis=0))
        acts = [0] + ([1] if n.op_type == "MatMul" and n.input[1] not in const else [])
        for k in acts:
            x = n.input[k]
            if x not in fq:  # one Q/DQ per tensor, shared by its quantized readers
                fq[x] = f"{x}/edgeq_fq"
                body.extend(qdq(x, x, fq[x]))
            body.extend(mix(x, fq[x], gate, f"{x}/edgeq_mix{i}"))
            n.input[k] = f"{x}/edgeq_mix{i}"
        w = n.input[1]
        if 1 not in acts and w in inits:
            arr = numpy_helper.to_array(inits[w])
            axis = _weight_axis(n) if policy.per_channel and n.op_type in policy.per_channel_types() else None
            delta = (
                fake_quant_weight(arr, axis, policy.weight_type, policy.weight_symmetric, policy.weight_bits == 7) - arr
            )
            new_inits.append(numpy_helper.from_array(delta.astype(arr.dtype), f"{w}/edgeq_dw{i}"))
            body.append(helper.make_node("Mul", [gate, f"{w}/edgeq_dw{i}"], [f"{w}/edgeq_gdw{i}"]))
            body.append(helper.make_node("Add", [w, f"{w}/edgeq_gdw{i}"], [f"{w}/edgeq_w{i}"]))
            n.input[1] = f"{w}/edgeq_w{i}"
        body.append(n)
        if policy.output_quantization:  # readers of the output read its Q/DQ copy (ORT's layout)
            o = n.output[0]
            raw = f"{o}/edgeq_raw"
            n.output[0] = raw
            body.extend(qdq(raw, o, f"{o}/edgeq_fqo"))
            body.extend(mix(raw, f"{o}/edgeq_fqo", gate, o))
    del g.node[:]
    g.node.extend(body)
    g.initializer.extend(new_inits)
    return Switchable(model, chosen, declared, act_type)


# -- evaluation -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalSample:
    feeds: dict[str, np.ndarray]
    reference: np.ndarray  # the FP32 UNet output
    group: int


class Evaluator:
    """Runs the switchable model on samples; returns UNet output SQNR per timestep group."""

    def __init__(
        self,
        sw: Switchable,
        samples: list[EvalSample],
        group_ranges: list[dict[str, tuple[float, float]]],
        symmetric: bool,
        workdir: Path,
    ):
        import onnxruntime as ort

        self.sw = sw
        self.samples = samples
        self.n_groups = len(group_ranges)
        self.symmetric = symmetric
        self.qfeeds = [sw.qparam_feeds(r, symmetric) for r in group_ranges]
        fd, path = tempfile.mkstemp(prefix=".switchable-", suffix=".onnx", dir=workdir)
        os.close(fd)
        data = Path(path).name + ".data"
        try:
            onnx.save_model(sw.model, path, save_as_external_data=True, location=data, size_threshold=1024)
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            self.sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        finally:
            os.unlink(path)
            (Path(workdir) / data).unlink(missing_ok=True)
        names = {i.name for i in self.sess.get_inputs()}
        self.names = names
        self.calls = 0

    def set_ranges(self, group_ranges: list[dict[str, tuple[float, float]]]) -> None:
        """Evaluate with other activation ranges (they are graph inputs: no new session)."""
        self.qfeeds = [self.sw.qparam_feeds(r, self.symmetric) for r in group_ranges]

    def sqnr(self, gates: np.ndarray) -> np.ndarray:
        """SQNR (dB) of each timestep group with the given gates (1 = quantized)."""
        sig = np.zeros(self.n_groups)
        err = np.zeros(self.n_groups)
        g32 = np.asarray(gates, np.float32)
        for s in self.samples:
            feeds = {k: v for k, v in s.feeds.items() if k in self.names}
            out = self.sess.run(["out_sample"], {**feeds, **self.qfeeds[s.group], GATES: g32})[0]
            ref = s.reference.astype(np.float64)
            sig[s.group] += float((ref**2).sum())
            err[s.group] += float(((ref - out) ** 2).sum())
            self.calls += 1
        with np.errstate(divide="ignore"):
            return np.where(err > 0, 10 * np.log10(sig / np.maximum(err, 1e-300)), np.inf)


# -- sensitivity and mixed precision --------------------------------------------------------------
@dataclass
class NodeSensitivity:
    node: str
    op_type: str
    macs: int
    mac_share: float  # of all Conv/MatMul/Gemm MACs with a constant weight
    alone_db: list[float]  # per-group SQNR with only this node quantized
    float_gain_db: float  # worst-group SQNR gained when only this node is left float
    activation_matmul: bool  # attention QK^T / AV: activation times activation

    def to_dict(self) -> dict:
        return asdict(self)


def measure(
    ev: Evaluator,
    decisions: list[Decision],
    macs: dict[str, int],
    act_act: set[str],
) -> tuple[np.ndarray, list[NodeSensitivity]]:
    """Every node alone, and every node left float, against the all-quantized baseline.

    MAC shares are of the weight layers (Conv/MatMul/Gemm with a constant weight); attention's
    activation-by-activation MatMuls are counted apart and have share 0.
    """
    sw = ev.sw
    n = len(sw.nodes)
    op = {d.node: d.op_type for d in decisions}
    weight_macs = sum(v for k, v in macs.items() if k not in act_act)
    base = ev.sqnr(np.ones(n))
    rows = []
    for i, node in enumerate(tqdm(sw.nodes, desc="sensitivity", unit="node")):
        alone = ev.sqnr(np.eye(n)[i])
        left = ev.sqnr(1.0 - np.eye(n)[i])
        rows.append(
            NodeSensitivity(
                node,
                op[node],
                macs.get(node, 0),
                0.0 if node in act_act else macs.get(node, 0) / max(weight_macs, 1),
                [float(v) for v in alone],
                float(left.min() - base.min()),
                node in act_act,
            )
        )
    rows.sort(key=lambda r: -r.float_gain_db)
    return base, rows


@dataclass
class MixedPrecision:
    """The nodes kept float to reach a goal, and the measured trade-off curve."""

    goal_db: float
    max_float_share: float
    met: bool
    float_nodes: list[dict] = field(default_factory=list)  # node, gain_db, mac_share, worst_db_after
    curve: list[dict] = field(default_factory=list)  # float_share, worst_db, mean_db, nodes_float

    def to_dict(self) -> dict:
        return asdict(self)


def search(
    ev: Evaluator,
    sw: Switchable,
    share: dict[str, float],
    goal_db: float,
    max_float_share: float,
    base_share: float = 0.0,
    rerank_every: int = 4,
    max_steps: int = 64,
    log: Callable[[str], None] = print,
) -> MixedPrecision:
    """Greedy: leave float the node whose float copy gains the worst group most, until the goal.

    The ranking is the leave-one-out gain measured on the current configuration, re-measured every
    ``rerank_every`` additions (errors of nodes interact through the network). A node whose MACs
    would take the float share past ``max_float_share`` is passed over for the next one;
    ``base_share`` is what the profile's own exclusions already leave float.
    """
    n = len(sw.nodes)
    gates = np.ones(n)
    cur = ev.sqnr(gates)
    res = MixedPrecision(goal_db, max_float_share, bool(cur.min() >= goal_db))
    res.curve.append(
        {"float_share": base_share, "worst_db": float(cur.min()), "mean_db": float(cur.mean()), "nodes_float": 0}
    )
    order: list[tuple[float, int]] = []
    steps = 0
    while cur.min() < goal_db and steps < max_steps:
        if steps % rerank_every == 0 or not order:
            order = []
            for i in tqdm([i for i in range(n) if gates[i]], desc="mixed precision: rank", unit="node", leave=False):
                trial = gates.copy()
                trial[i] = 0
                order.append((float(ev.sqnr(trial).min() - cur.min()), i))
            order.sort(key=lambda x: (-x[0], share.get(sw.nodes[x[1]], 0.0)))
        used = base_share + sum(share.get(sw.nodes[i], 0.0) for i in range(n) if not gates[i])
        pick = next(
            (
                (gain, i)
                for gain, i in order
                if gates[i] and used + share.get(sw.nodes[i], 0.0) <= max_float_share + 1e-12
            ),
            None,
        )
        if pick is None or pick[0] <= 0:
            break
        order.remove(pick)
        gates[pick[1]] = 0
        cur = ev.sqnr(gates)
        steps += 1
        node = sw.nodes[pick[1]]
        used += share.get(node, 0.0)
        res.float_nodes.append(
            {"node": node, "gain_db": pick[0], "mac_share": share.get(node, 0.0), "worst_db_after": float(cur.min())}
        )
        res.curve.append(
            {"float_share": used, "worst_db": float(cur.min()), "mean_db": float(cur.mean()), "nodes_float": steps}
        )
        log(f"  float {node}: worst group {cur.min():.2f} dB, float MAC share {100 * used:.2f}%")
    res.met = bool(cur.min() >= goal_db)
    return res
