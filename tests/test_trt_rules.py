"""TensorRT's Q/DQ rules on hand-made graphs: a clean graph passes, each broken rule is named by node."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.targets.tensorrt.rules import RULES, report, validate

C = 4


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _qdq(x: str, tag: str, scale=0.05, zp=None, nodes=None, inits=None) -> str:
    """x -> QuantizeLinear -> DequantizeLinear; returns the dequantized name."""
    inits.append(_init(f"{tag}_s", np.array(scale, np.float32)))
    inits.append(_init(f"{tag}_z", np.array(np.int8(0) if zp is None else zp)))
    nodes.append(helper.make_node("QuantizeLinear", [x, f"{tag}_s", f"{tag}_z"], [f"{tag}_q"], name=f"{tag}_Q"))
    nodes.append(
        helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_s", f"{tag}_z"], [f"{tag}_dq"], name=f"{tag}_DQ")
    )
    return f"{tag}_dq"


def _weight(tag: str, shape, axis=0, nodes=None, inits=None) -> str:
    w = np.random.default_rng(0).integers(-100, 100, size=shape).astype(np.int8)
    n_ch = shape[axis]
    inits += [
        _init(f"{tag}_w", w),
        _init(f"{tag}_ws", np.full(n_ch, 0.01, np.float32)),
        _init(f"{tag}_wz", np.zeros(n_ch, np.int8)),
    ]
    nodes.append(
        helper.make_node(
            "DequantizeLinear", [f"{tag}_w", f"{tag}_ws", f"{tag}_wz"], [f"{tag}_wdq"], name=f"{tag}_wDQ", axis=axis
        )
    )
    return f"{tag}_wdq"


def _model(nodes, inits, outputs=("out",), extra_inputs=()):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 8, 8])]
        + [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in extra_inputs],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, C, 8, 8]) for o in outputs],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    onnx.checker.check_model(m)
    return m


def good_resnet():
    """Q/DQ on the conv input and weight only; the conv's float output meets the residual Add."""
    nodes, inits = [], []
    xq = _qdq("x", "a", nodes=nodes, inits=inits)
    w = _weight("c", (C, C, 3, 3), nodes=nodes, inits=inits)
    nodes.append(helper.make_node("Conv", [xq, w], ["y"], name="/conv2/Conv", pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Add", ["y", "x"], ["out"], name="/Add"))
    return _model(nodes, inits)


def test_clean_graph_has_no_violations():
    assert validate(good_resnet()) == []
    assert "no violations" in report([])


def _rules(m, **kw):
    return sorted({v.rule for v in validate(m, **kw)})


def test_asymmetric_uint8_zero_point():
    nodes, inits = [], []
    xq = _qdq("x", "a", zp=np.uint8(128), nodes=nodes, inits=inits)
    w = _weight("c", (C, C, 1, 1), nodes=nodes, inits=inits)
    nodes.append(helper.make_node("Conv", [xq, w], ["out"], name="/conv/Conv"))
    found = validate(_model(nodes, inits))
    assert {v.rule for v in found} == {"zero-point"}
    assert all(v.node.startswith("a_") for v in found)  # the Q and the DQ are named


def test_scale_computed_at_run_time():
    nodes, inits = [], []
    inits += [_init("two", np.array(2.0, np.float32)), _init("z", np.array(np.int8(0)))]
    nodes.append(helper.make_node("ReduceMax", ["x"], ["mx"], name="/amax", keepdims=0))
    nodes.append(helper.make_node("Div", ["mx", "two"], ["s"], name="/scale"))
    nodes.append(helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="dyn_Q"))
    nodes.append(helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dyn_DQ"))
    w = _weight("c", (C, C, 1, 1), nodes=nodes, inits=inits)
    nodes.append(helper.make_node("Conv", ["dq", w], ["out"], name="/conv/Conv"))
    assert _rules(_model(nodes, inits)) == ["constant-scale"]


def test_per_channel_activation_and_wrong_weight_axis():
    nodes, inits = [], []
    inits += [_init("as", np.full(C, 0.05, np.float32)), _init("az", np.zeros(C, np.int8))]
    nodes.append(helper.make_node("QuantizeLinear", ["x", "as", "az"], ["q"], name="act_Q", axis=1))
    nodes.append(helper.make_node("DequantizeLinear", ["q", "as", "az"], ["dq"], name="act_DQ", axis=1))
    w = _weight("c", (C, 2 * C, 1, 1), axis=1, nodes=nodes, inits=inits)  # axis 1 of a Conv weight: input channels
    nodes.append(helper.make_node("Conv", ["dq", w], ["out"], name="/conv/Conv"))
    found = validate(_model(nodes, inits))
    assert {v.rule for v in found} == {"per-tensor-activation", "weight-axis"}
    axis = next(v for v in found if v.rule == "weight-axis")
    assert axis.node == "c_wDQ" and "axis 0" in axis.detail


def test_qdq_between_conv_and_residual_add():
    nodes, inits = [], []
    xq = _qdq("x", "a", nodes=nodes, inits=inits)
    w = _weight("c", (C, C, 1, 1), nodes=nodes, inits=inits)
    nodes.append(helper.make_node("Conv", [xq, w], ["y"], name="/conv2/Conv"))
    yq = _qdq("y", "b", nodes=nodes, inits=inits)
    nodes.append(helper.make_node("Add", [yq, "x"], ["out"], name="/resnet/Add"))
    found = validate(_model(nodes, inits))
    assert [(v.rule, v.node) for v in found] == [("residual-add", "/resnet/Add")]
    assert "/conv2/Conv" in found[0].detail


def test_concat_inputs_with_different_scales():
    nodes, inits = [], []
    aq = _qdq("x", "a", scale=0.05, nodes=nodes, inits=inits)
    bq = _qdq("skip", "b", scale=0.5, nodes=nodes, inits=inits)
    nodes.append(helper.make_node("Concat", [aq, bq], ["cat"], name="/up/Concat", axis=1))
    w = _weight("c", (C, 2 * C, 1, 1), nodes=nodes, inits=inits)
    nodes.append(helper.make_node("Conv", ["cat", w], ["out"], name="/up/conv_shortcut/Conv"))
    m = _model(nodes, inits, extra_inputs=[("skip", [1, C, 8, 8])])
    assert [(v.rule, v.node) for v in validate(m)] == [("concat-scales", "/up/Concat")]


def test_attention_matmul_and_softmax_in_int8():
    nodes, inits = [], []
    qq = _qdq("x", "q", nodes=nodes, inits=inits)
    kq = _qdq("k", "k", nodes=nodes, inits=inits)
    nodes.append(helper.make_node("MatMul", [qq, kq], ["scores"], name="/attn1/MatMul"))
    sq = _qdq("scores", "s", nodes=nodes, inits=inits)
    nodes.append(helper.make_node("Softmax", [sq], ["out"], name="/attn1/Softmax", axis=-1))
    m = _model(nodes, inits, extra_inputs=[("k", [1, C, 8, 8])])
    assert {(v.rule, v.node) for v in validate(m)} == {
        ("attention-float", "/attn1/MatMul"),
        ("attention-float", "/attn1/Softmax"),
    }


def test_qdq_feeding_a_float_op_and_an_excluded_node():
    nodes, inits = [], []
    xq = _qdq("x", "a", nodes=nodes, inits=inits)
    nodes.append(helper.make_node("Sigmoid", [xq], ["sig"], name="/nonlinearity/Sigmoid"))
    w = _weight("c", (C, C, 1, 1), nodes=nodes, inits=inits)
    nodes.append(helper.make_node("Conv", [xq, w], ["y"], name="/conv_in/Conv"))
    nodes.append(helper.make_node("Add", ["y", "sig"], ["out"], name="/Add"))
    m = _model(nodes, inits)
    assert [(v.rule, v.node) for v in validate(m)] == [("qdq-on-inputs", "/nonlinearity/Sigmoid")]
    found = validate(m, exclude_patterns=("^/conv_in/",))
    assert ("excluded-node", "/conv_in/Conv") in {(v.rule, v.node) for v in found}


def test_every_rule_is_documented():
    assert len(RULES) == 9 and all(RULES.values())


@pytest.mark.parametrize("limit", [1, 50])
def test_report_lists_counts_and_nodes(limit):
    nodes, inits = [], []
    xq = _qdq("x", "a", zp=np.uint8(3), nodes=nodes, inits=inits)
    nodes.append(helper.make_node("Relu", [xq], ["out"], name="/relu"))
    text = report(validate(_model(nodes, inits)), limit=limit)
    assert "zero-point: 4" in text and "qdq-on-inputs: 1" in text
    assert ("more" in text) == (limit == 1)
