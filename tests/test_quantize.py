"""Q/DQ placement, the quant plan's per-group graphs, and target profiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeq.profiles import load_profile
from edgeq.quantize.insert import quantize_graph, read_activation_qparams, save_group_graphs
from edgeq.quantize.policy import decide, summary, tensors_to_calibrate

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def unet(tiny_exports):
    path = tiny_exports["sd15"] / "unet" / "model.onnx"
    policy = load_profile("ort-cpu").policy("unet")
    graph = onnx.load(str(path)).graph
    decisions = decide(graph, policy)
    return path, policy, decisions, tensors_to_calibrate(graph, decisions)


def test_placement_matches_golden(unet):
    """Which node got Q/DQ and why, for the SD1.5-structured UNet under the ort-cpu profile."""
    _, _, decisions, _ = unet
    got = summary(decisions)
    golden = GOLDEN / "sd15_unet_ort_cpu.txt"
    assert got == golden.read_text(), "placement changed: review, then regenerate tests/golden/sd15_unet_ort_cpu.txt"


def test_every_float_node_has_a_reason(unet):
    _, _, decisions, _ = unet
    floats = [d for d in decisions if not d.quantized]
    assert floats and all(d.reason.strip() for d in floats)
    names = {d.node: d for d in decisions}
    assert not names["/conv_in/Conv"].quantized and not names["/conv_out/Conv"].quantized
    attn = [d for d in decisions if d.node.endswith("attn1/MatMul")]
    assert attn and not any(d.quantized for d in attn)


def _ranges(tensors, scale: float) -> dict[str, tuple[float, float]]:
    rng = np.random.default_rng(len(tensors))
    return {t: (-scale * float(rng.uniform(0.5, 1.5)), scale * float(rng.uniform(0.5, 1.5))) for t in tensors}


def test_group_graph_sharing_weights_equals_direct_quantization(unet, tmp_path):
    """A group graph whose weights live in the shared file runs exactly like ORT's own quantization."""
    import onnxruntime as ort

    path, policy, decisions, tensors = unet
    r0, r1 = _ranges(tensors, 2.0), _ranges(tensors, 7.0)
    ranges = [r0, r1]
    names = save_group_graphs(lambda g: quantize_graph(path, decisions, policy, ranges[g]), 2, tmp_path)
    assert names == ["model.g0.onnx", "model.g1.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.g0.onnx", "model.g1.onnx", "model.onnx_data"]
    direct = quantize_graph(path, decisions, policy, r1)
    patched = onnx.load(str(tmp_path / "model.g1.onnx"))
    assert read_activation_qparams(patched, tensors) == read_activation_qparams(direct, tensors)
    assert read_activation_qparams(patched, tensors) != read_activation_qparams(
        onnx.load(str(tmp_path / "model.g0.onnx")), tensors
    )
    # the group graph stores no large tensor of its own: the int8 weights are read from the shared file
    shell = onnx.load(str(tmp_path / "model.g1.onnx"), load_external_data=False)
    internal = [
        i.name
        for i in shell.graph.initializer
        if i.data_location != onnx.TensorProto.EXTERNAL and len(i.raw_data) > 1024
    ]
    external = [i for i in shell.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    assert not internal and external
    assert {d.value for i in external for d in i.external_data if d.key == "location"} == {"model.onnx_data"}
    feeds = {
        "sample": np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32),
        "timestep": np.array(500.0, np.float32),
        "encoder_hidden_states": np.random.default_rng(1).standard_normal((2, 77, 32)).astype(np.float32),
    }
    a = ort.InferenceSession(str(tmp_path / "model.g1.onnx")).run(None, feeds)[0]
    b = ort.InferenceSession(direct.SerializeToString()).run(None, feeds)[0]
    np.testing.assert_array_equal(a, b)


def test_quantization_is_deterministic(unet):
    path, policy, decisions, tensors = unet
    r = _ranges(tensors, 3.0)
    a = quantize_graph(path, decisions, policy, r).SerializeToString()
    b = quantize_graph(path, decisions, policy, r).SerializeToString()
    assert a == b


def test_weights_are_int8_per_channel(unet):
    path, policy, decisions, tensors = unet
    model = quantize_graph(path, decisions, policy, _ranges(tensors, 1.0))
    inits = {i.name: i for i in model.graph.initializer}
    conv_w = [
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in inits
        and inits[n.input[0]].data_type == onnx.TensorProto.INT8
    ]
    assert conv_w
    zps = [numpy_helper.to_array(inits[n.input[2]]) for n in conv_w if len(n.input) > 2 and n.input[2] in inits]
    assert all((z == 0).all() for z in zps)  # symmetric weights
    assert any(numpy_helper.to_array(inits[n.input[1]]).size > 1 for n in conv_w)  # per channel


def test_vnni_openvino_flavour_and_float_attention_probs(tiny_exports):
    """openvino's x86-vnni flavour: attention MatMuls int8 with symmetric int8 zero points; with
    attention_probs = "float" the A.V MatMul reads the Softmax output itself (no Q/DQ, no scale left)
    while Q, K and V keep theirs, and the graph still runs."""
    from dataclasses import replace

    import onnxruntime as ort

    path = tiny_exports["sd15"] / "unet" / "model.onnx"
    policy = load_profile("openvino").policy("unet").for_family("x86-vnni")
    graph = onnx.load(str(path)).graph
    decisions = decide(graph, policy)
    tensors = tensors_to_calibrate(graph, decisions, policy)
    ranges = {t: (-1.0, 1.0) for t in tensors}
    attn = {d.node for d in decisions if d.quantized and d.reason.startswith("MatMul of two activations")}
    assert attn
    models = {p: quantize_graph(path, decisions, replace(policy, attention_probs=p), ranges) for p in ("int8", "float")}
    for probs, model in models.items():
        prod = {o: n for n in model.graph.node for o in n.output}
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        zps = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
        assert zps and all(z.dtype == np.int8 and (z == 0).all() for z in zps)  # symmetric int8 activations
        softmax_in, qdq_in = 0, 0
        for n in model.graph.node:
            if n.name not in attn:
                continue
            srcs = [prod.get(i) for i in n.input]
            qdq_in += sum(s is not None and s.op_type == "DequantizeLinear" for s in srcs)
            softmax_in += sum(s is not None and s.op_type == "Softmax" for s in srcs)
        if probs == "int8":
            assert softmax_in == 0 and qdq_in == 2 * len(attn)
        else:
            assert softmax_in == len(attn) // 2 and qdq_in == 2 * len(attn) - softmax_in
            assert not any("Softmax" in name and name.endswith("_scale") for name in inits)
    feeds = {
        "sample": np.zeros((2, 4, 8, 8), np.float32),
        "timestep": np.array(500.0, np.float32),
        "encoder_hidden_states": np.zeros((2, 77, 32), np.float32),
    }
    sess = ort.InferenceSession(models["float"].SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in sess.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in inputs}
    assert np.isfinite(sess.run(None, feeds)[0]).all()


@pytest.mark.parametrize(
    "profile,family",
    [
        ("ort-cpu", None),
        ("ort-cpu", "sdxl"),  # SDXL's add-embedding Gemms: ORT folds their beta into the bias scale
        ("openvino", "x86-vnni"),
        ("openvino", "x86-novnni"),
        ("ort-mobile", None),
        ("ort-mobile-qnn", None),
        ("tensorrt", None),
    ],
)
def test_group_graph_derived_from_the_shared_one_is_what_ort_writes(tiny_exports, profile, family, tmp_path):
    """A group's Q/DQ graph derived from the shared one (ORT's activation scales for the group's ranges,
    int32 biases by ORT's formula, no weights quantized again) is byte for byte what ORT's quantizer
    writes for those ranges, in every shipped profile's flavour; where a bias would overflow int32 (ORT
    then raises the weight's scale), no graph is derived."""
    from edgeq.quantize.insert import group_model

    path = tiny_exports["sdxl" if family == "sdxl" else "sd15"] / "unet" / "model.onnx"
    policy = load_profile(profile).policy("unet")
    policy = policy.for_family(family) if family and family != "sdxl" else policy
    graph = onnx.load(str(path)).graph
    decisions = decide(graph, policy)
    tensors = tensors_to_calibrate(graph, decisions, policy)
    if family == "sdxl":
        assert any(n.op_type == "Gemm" and n.name in {d.node for d in decisions if d.quantized} for n in graph.node)
    shared_r, group_r = _ranges(tensors, 2.0), _ranges(tensors, 0.3)
    shared = quantize_graph(path, decisions, policy, shared_r)
    derived = group_model(shared, path, decisions, policy, shared_r, group_r)
    direct = quantize_graph(path, decisions, policy, group_r)
    assert derived is not None
    assert derived.SerializeToString() == direct.SerializeToString()
    assert derived.SerializeToString() != shared.SerializeToString()
    if profile == "ort-cpu" and family is None:  # weights in external data, as every large export's are
        ext = tmp_path / "ext" / "model.onnx"
        ext.parent.mkdir()
        onnx.save_model(onnx.load(str(path)), str(ext), save_as_external_data=True, size_threshold=0)
        again = group_model(shared, ext, decisions, policy, shared_r, group_r)
        assert again is not None and again.SerializeToString() == direct.SerializeToString()
    if any(n.op_type == "Conv" and len(n.input) > 2 for n in direct.graph.node) and policy.quantize_bias:
        tiny = {t: (lo * 1e-12, hi * 1e-12) for t, (lo, hi) in group_r.items()}  # biases overflow int32
        assert group_model(shared, path, decisions, policy, shared_r, tiny) is None
