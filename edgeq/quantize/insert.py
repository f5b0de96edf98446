"""Q/DQ insertion with ONNX Runtime's own quantizer, fed with ranges edgeq computed.

ORT's ``QDQQuantizer`` places the Q/DQ nodes (the same code ``quantize_static`` runs after its
calibrator); edgeq hands it the ranges from its streaming, timestep-grouped statistics and the node
list from the profile's policy, so ORT's memory-hungry calibrator never runs.

Per-group graphs differ only in activation scales, zero points and the int32 biases that depend on
them: each is derived from the shared graph with ORT's own scale computation and bias formula, byte
for byte what ORT's quantizer writes (:func:`group_model`; the quantizer runs again where a weight's
scale would change), and their identical int8 weights are stored once (see :func:`save_group_graphs`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgeq.profiles import ComponentPolicy
from edgeq.quantize.policy import Decision

WEIGHTS_FILE = "model.onnx_data"
# Bumped whenever the Q/DQ graphs this module writes change, so cached quantized graphs are redone.
# 2: non-quantized consumers of a quantized tensor read the float tensor again.
# 3: ... except those of a quantized op's own output Q/DQ, where the profile quantizes outputs.
QDQ_VERSION = 3
_QTYPES = {"uint8": "QUInt8", "int8": "QInt8", "uint16": "QUInt16", "int16": "QInt16"}


def _qtype(name: str):
    from onnxruntime.quantization.quant_utils import QuantType

    return getattr(QuantType, _QTYPES[name])


def quantize_graph(
    fp32_path: Path, decisions: list[Decision], policy: ComponentPolicy, ranges: dict[str, tuple[float, float]]
) -> onnx.ModelProto:
    """The Q/DQ model for one set of activation ranges."""
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    q = _quantizer(load_model_with_shape_infer(fp32_path), decisions, policy, ranges)
    q.quantize_model()
    out = q.model.model
    quantized = {d.node for d in decisions if d.quantized}
    _float_consumers_read_float(out, quantized, policy.output_quantization)
    if policy.attention_probs == "float":
        _float_attention_probs(out, quantized)
    out.producer_name = "edgeq"
    return out


def _quantizer(model: onnx.ModelProto, decisions: list[Decision], policy: ComponentPolicy, ranges: dict):
    """ONNX Runtime's ``QDQQuantizer`` for ``model`` with edgeq's settings and ``ranges``."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    data = {
        t: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
        for t, (lo, hi) in ranges.items()
    }
    extra = {
        "ActivationSymmetric": policy.activation_symmetric,
        "WeightSymmetric": policy.weight_symmetric,
        "QuantizeBias": policy.quantize_bias,
        "AddQDQPairToWeight": policy.weight_qdq_pair,
        "OpTypesToExcludeOutputQuantization": [] if policy.output_quantization else list(policy.op_types),
        "DedicatedQDQPair": False,
    }
    if policy.per_channel and policy.per_channel_op_types:
        extra["TensorQuantOverrides"] = _per_tensor_weights(model, decisions, policy)
    return QDQQuantizer(
        model,
        policy.per_channel,
        policy.weight_bits == 7,  # reduce_range: weights within +-64 (activations keep 8 bits in QDQ)
        _qtype(policy.weight_type),
        _qtype(policy.activation_type),
        TensorsData(CalibrationMethod.MinMax, data),
        [d.node for d in decisions if d.quantized],
        [d.node for d in decisions if not d.quantized],
        list(policy.op_types),
        extra,
    )


def _per_tensor_weights(model: onnx.ModelProto, decisions: list[Decision], policy: ComponentPolicy) -> dict:
    """Per-tensor overrides for the constant weights of quantized ops outside ``per_channel_op_types``."""
    inits = {i.name for i in model.graph.initializer}
    chosen = {d.node for d in decisions if d.quantized}
    spec = [{"quant_type": _qtype(policy.weight_type), "symmetric": policy.weight_symmetric}]
    return {
        n.input[1]: spec
        for n in model.graph.node
        if n.name in chosen and n.op_type not in policy.per_channel_op_types and n.input[1] in inits
    }


def _float_consumers_read_float(model: onnx.ModelProto, quantized: set[str], output_qdq: bool = True) -> int:
    """Point nodes that are not quantized back at the float tensor instead of its Q/DQ copy.

    ORT's quantizer rewires *every* consumer of a quantized activation to the dequantized copy, so
    a skip connection saved for a later Concat, or a Shape, reads a rounded tensor although the
    node itself is float. Q/DQ belongs on the inputs of quantized ops alone (TensorRT's rule, and
    the float paths keep full precision on every target). Returns how many inputs were rewired.
    """
    prod = {o: n for n in model.graph.node for o in n.output}
    float_of = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in prod and prod[n.input[0]].op_type == "QuantizeLinear":
            src = prod[n.input[0]].input[0]
            if output_qdq and src in prod and prod[src].name in quantized:
                # a quantized op's output Q/DQ: a float reader of the raw output stops every backend
                # fusing the op with its int8 output (ORT's QLinearConv / QLinearMatMul, XNNPACK)
                continue
            float_of[n.output[0]] = src
    rewired = 0
    for n in model.graph.node:
        if n.name in quantized or n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(n.input):
            if name in float_of:
                n.input[i] = float_of[name]
                rewired += 1
    return rewired


def _float_attention_probs(model: onnx.ModelProto, quantized: set[str]) -> int:
    """Quantized MatMuls that read a Softmax output (attention probabilities times V) read it float:
    its Q/DQ pair, scale and zero point go. Q, K and V keep theirs (NNCF's placement; OpenVINO still
    runs the attention block as one int8 subgraph). Returns how many MatMul inputs were rewired."""
    prod = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    gone: set[str] = set()
    params: set[str] = set()
    rewired = 0
    for n in model.graph.node:
        if n.op_type != "MatMul" or n.name not in quantized:
            continue
        dq = prod.get(n.input[0])
        q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or prod.get(q.input[0], n).op_type != "Softmax":
            continue
        n.input[0] = q.input[0]
        rewired += 1
        if all(r is n for r in readers[dq.output[0]]):
            gone.add(dq.name)
            if all(r is dq for r in readers[q.output[0]]):
                gone.add(q.name)
                params.update(q.input[1:])
    keep = [n for n in model.graph.node if n.name not in gone]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    used = {i for n in model.graph.node for i in n.input}
    inits = [i for i in model.graph.initializer if i.name not in params or i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    return rewired


def read_activation_qparams(model: onnx.ModelProto, tensors: list[str]) -> dict[str, tuple[float, int]]:
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for t in tensors:
        if f"{t}_scale" in inits:
            out[t] = (
                float(numpy_helper.to_array(inits[f"{t}_scale"])),
                int(numpy_helper.to_array(inits[f"{t}_zero_point"])),
            )
    return out


def weight_summary(model: onnx.ModelProto) -> list[dict]:
    """Per quantized weight: its node, shape, axis and scale range (for the quant plan)."""
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits:
            continue
        w = inits[n.input[0]]
        if w.data_type not in (
            onnx.TensorProto.INT8,
            onnx.TensorProto.UINT8,
            onnx.TensorProto.INT16,
            onnx.TensorProto.UINT16,
            onnx.TensorProto.INT32,
        ):
            continue
        scale = numpy_helper.to_array(inits[n.input[1]]) if n.input[1] in inits else np.array([np.nan])
        axis = next((a.i for a in n.attribute if a.name == "axis"), None)
        out.append(
            {
                "tensor": n.input[0],
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(w.data_type).name,
                "shape": list(w.dims),
                "axis": axis if scale.size > 1 else None,
                "channels": int(scale.size),
                "scale_min": float(scale.min()),
                "scale_max": float(scale.max()),
            }
        )
    return out


def group_model(
    shared: onnx.ModelProto,
    fp32_path: Path,
    decisions: list[Decision],
    policy: ComponentPolicy,
    shared_ranges: dict[str, tuple[float, float]],
    ranges: dict[str, tuple[float, float]],
) -> onnx.ModelProto | None:
    """The Q/DQ model ONNX Runtime's quantizer makes for ``ranges``, derived from ``shared`` (its
    model for ``shared_ranges``) without quantizing the weights again; None where it cannot be.

    A group's graph differs from the shared one only in numbers that follow from the activation
    ranges: each activation's scale and zero point, which ORT's own ``QDQQuantizer`` computes here
    (``quantization_params``, no weights touched), and each int32 bias, quantized with ORT's formula
    (``round(bias / (input_scale * weight_scale))``, clipped to int32). ORT's quantizer also raises a
    weight's scale where a bias would not fit in int32 at that input scale; where that could happen
    in this group or did in the shared graph (any bias within 0.1% of the limit), the weights would
    differ: None, and the caller runs the quantizer. The derived graph is byte for byte what the
    quantizer writes (``tests/test_quantize.py``); at SDXL size it takes seconds where the quantizer
    takes 4-6 minutes.
    """
    import copy

    from onnx.external_data_helper import load_external_data_for_tensor
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    bare = onnx.load(str(fp32_path), load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(bare)
    add_infer_metadata(inferred)  # shapes are inferred: ORT's quantizer does not save and reload the graph
    q = _quantizer(inferred, decisions, policy, ranges)
    qs = _quantizer(copy.deepcopy(inferred), decisions, policy, shared_ranges)
    params = {t: p.original for t, p in q.quantization_params.items()}
    old = {t: p.original for t, p in qs.quantization_params.items()}
    if any(p.converted is not None for p in q.quantization_params.values()):
        return None
    inits = {i.name: i for i in shared.graph.initializer}
    prod = {o: n for n in shared.graph.node for o in n.output}
    new: dict[str, np.ndarray] = {}
    for t, p in params.items():
        if f"{t}_scale" in inits:
            new[f"{t}_scale"] = np.asarray(p["scale"])
            new[f"{t}_zero_point"] = np.asarray(p["zero_point"])
    fp32_inits = {i.name: i for i in bare.graph.initializer}
    fp32_nodes = {n.name: n for n in bare.graph.node}
    limit = np.float64(np.iinfo(np.int32).max) - np.float64(np.iinfo(np.int32).min + 1)
    for n in shared.graph.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 3:
            continue
        bias_dq = prod.get(n.input[2])
        if bias_dq is None or bias_dq.op_type != "DequantizeLinear" or bias_dq.input[0] not in inits:
            continue
        qname = bias_dq.input[0]
        if inits[qname].data_type != onnx.TensorProto.INT32 or not qname.endswith("_quantized"):
            return None
        x_dq, w_dq = prod.get(n.input[0]), prod.get(n.input[1])
        x_q = prod.get(x_dq.input[0]) if x_dq is not None and x_dq.op_type == "DequantizeLinear" else None
        if x_q is None or x_q.op_type != "QuantizeLinear" or w_dq is None or w_dq.input[1] not in inits:
            return None
        tensor = x_q.input[0]
        bias_name = qname[: -len("_quantized")]
        if tensor not in params or tensor not in old or bias_name not in fp32_inits or n.name not in fp32_nodes:
            return None
        bias_tp = copy.deepcopy(fp32_inits[bias_name])
        if bias_tp.data_location == onnx.TensorProto.EXTERNAL:
            load_external_data_for_tensor(bias_tp, str(Path(fp32_path).parent))
        bias = numpy_helper.to_array(bias_tp)
        if bias.dtype != np.float32:
            return None
        beta = 1.0  # Gemm: ORT folds the node's beta into the bias scale (and sets the node's to 1)
        for a in fp32_nodes[n.name].attribute if n.op_type == "Gemm" else ():
            if a.name == "beta":
                beta = onnx.helper.get_attribute_value(a)
        if beta == 0:
            bias, beta = np.zeros_like(bias), 1.0
        w_scale = numpy_helper.to_array(inits[w_dq.input[1]])
        smallest = 1.0001 * 2.0 * (np.abs(bias) if w_scale.size > 1 else np.abs(bias).max()) / limit
        in_scale = new[f"{tensor}_scale"]  # ORT reads it back from the scale initializer it wrote
        for scale in (in_scale, old[tensor]["scale"]):
            candidate = np.float64(np.asarray(scale).item()) * w_scale.astype(np.float64)
            if np.any(candidate < smallest * 1.001):  # ORT adjusts (or did adjust) this weight's scale
                return None
        bias_scale = in_scale * w_scale * beta
        quantized = (bias.astype(np.float64) / np.asarray(bias_scale, np.float64)).round()
        quantized = np.clip(quantized, np.float64(np.iinfo(np.int32).min), np.float64(np.iinfo(np.int32).max))
        new[qname] = quantized.astype(np.int32).reshape(bias.shape)
        new[bias_dq.input[1]] = np.asarray(bias_scale, dtype=bias.dtype).reshape(-1)
    model = copy.deepcopy(shared)
    for init in model.graph.initializer:
        if init.name in new:
            value = new[init.name]
            if value.dtype != numpy_helper.to_array(init).dtype:
                return None
            if init.raw_data:  # written as ORT wrote it: raw bytes, or the typed fields
                init.CopyFrom(numpy_helper.from_array(value.reshape(tuple(init.dims)), init.name))
            else:
                init.CopyFrom(
                    onnx.helper.make_tensor(init.name, init.data_type, list(init.dims), value.ravel().tolist())
                )
    return model


def save_group_graphs(make_model, n_groups: int, folder: Path, stem: str = "model") -> list[str]:
    """Group graphs sharing one weights file: ``model.g0.onnx`` ... and ``model.onnx_data``.

    ``make_model(g)`` returns group g's Q/DQ model, as ORT's quantizer writes it (or derived to the
    same bytes, :func:`group_model`), so activation scales and the int32 biases that depend on them
    are exactly what ORT computes. Group 0 is saved with its
    tensors in the weights file; in every other group, a tensor byte-identical to group 0's (all
    the int8 weights) points at the same bytes of that file, and only tensors that differ (biases,
    scales) are stored in the group's own graph.
    """
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    first = make_model(0)
    digests = {i.name: hashlib.sha256(numpy_helper.to_array(i).tobytes()).digest() for i in first.graph.initializer}
    onnx.save_model(
        first,
        str(folder / f"{stem}.g0.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=WEIGHTS_FILE,
        size_threshold=1024,
    )
    del first
    shell = onnx.load(str(folder / f"{stem}.g0.onnx"), load_external_data=False)
    external = {
        i.name: list(i.external_data) for i in shell.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL
    }
    names = [f"{stem}.g0.onnx"]
    for g in range(1, n_groups):
        model = make_model(g)
        for init in model.graph.initializer:
            if (
                init.name in external
                and hashlib.sha256(numpy_helper.to_array(init).tobytes()).digest() == digests[init.name]
            ):
                init.ClearField("raw_data")
                for field_name in (
                    "float_data",
                    "int32_data",
                    "int64_data",
                    "double_data",
                    "uint64_data",
                    "string_data",
                ):
                    init.ClearField(field_name)
                init.data_location = onnx.TensorProto.EXTERNAL
                del init.external_data[:]
                init.external_data.extend(external[init.name])
        onnx.save_model(model, str(folder / f"{stem}.g{g}.onnx"))
        names.append(f"{stem}.g{g}.onnx")
    return names
