"""The switchable fake-quant graph, MAC counting and the mixed-precision search, on small graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.profiles import ComponentPolicy
from edgeq.quantize.policy import decide, tensors_to_calibrate
from edgeq.quantize.sensitivity import (
    GATES,
    EvalSample,
    Evaluator,
    count_macs,
    fake_quant_weight,
    measure,
    search,
    switchable_model,
)

POLICY = ComponentPolicy(mode="int8", range_method="minmax")


def small_graph(path, outlier: float = 1.0):
    """x[1,3,8,8] -> conv1 -> Relu -> conv2 -> flatten-ish reshape -> fc (MatMul) -> QK^T-like MatMul."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    w1[0] *= outlier  # one output channel far larger: its activations dominate conv2's input range
    w2 = rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.3
    if outlier != 1.0:
        w2[:, 0] = 0.0  # conv2 ignores the outlier channel, yet it sets conv2's input range
    wf = rng.standard_normal((8, 6)).astype(np.float32) * 0.3
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(wf, "wf"),
        numpy_helper.from_array(np.array([1, 4, 16], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", strides=[2, 2]),
        helper.make_node("Reshape", ["c2", "shape"], ["flat"], name="reshape"),
        helper.make_node("Transpose", ["flat"], ["tok"], name="tr", perm=[0, 2, 1]),  # [1,16,4]
        helper.make_node("Concat", ["tok", "tok"], ["tok8"], name="cat", axis=2),  # [1,16,8]
        helper.make_node("MatMul", ["tok8", "wf"], ["fc"], name="fc"),  # [1,16,6]
        helper.make_node("Transpose", ["fc"], ["fcT"], name="tr2", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["fc", "fcT"], ["out_sample"], name="scores"),  # act x act
    ]
    g = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out_sample", TensorProto.FLOAT, None)],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(path))
    return path


def fp32_run(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def minmax_ranges(path, tensors, xs):
    """Exact min/max of each tensor over the inputs (a graph with the tensors as outputs)."""
    import onnxruntime as ort

    m = onnx.load(str(path))
    for t in tensors:
        m.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [s.run(tensors, {"x": x}) for x in xs]
    return {
        t: (float(min(o[i].min() for o in outs)), float(max(o[i].max() for o in outs))) for i, t in enumerate(tensors)
    }


def test_fake_quant_weight_per_channel_symmetric():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w[2] = 0.0
    fq = fake_quant_weight(w, 0, "int8", True)
    for c in range(4):
        scale = max(np.abs(w[c]).max() / 127, 1e-12)
        q = fq[c] / scale
        np.testing.assert_allclose(q, np.round(q), atol=1e-3)  # on the int8 grid of its own channel
        assert np.abs(fq[c] - w[c]).max() <= scale / 2 + 1e-7
    assert (fq[2] == 0).all()
    # MatMul weights [K, N]: one scale per output column (the last axis)
    wm = rng.standard_normal((5, 3)).astype(np.float32)
    wm[:, 1] *= 100
    fqm = fake_quant_weight(wm, -1, "int8", True)
    assert np.abs(fqm[:, 0] - wm[:, 0]).max() <= np.abs(wm[:, 0]).max() / 127 / 2 + 1e-7


def test_count_macs(tmp_path):
    path = small_graph(tmp_path / "g.onnx")
    g = onnx.load(str(path)).graph
    macs = count_macs(path, {"x": np.zeros((1, 3, 8, 8), np.float32)}, ["conv1", "conv2", "fc", "scores"])
    assert macs == {
        "conv1": 8 * 8 * 8 * 27,  # Cout * H * W * (Cin * kh * kw)
        "conv2": 4 * 4 * 4 * 8,
        "fc": 16 * 6 * 8,
        "scores": 16 * 16 * 6,
    }
    assert len(onnx.load(str(path)).graph.output) == len(g.output)  # the source graph is left alone


def test_switchable_gates_match_fp32_and_the_real_qdq_graph(tmp_path):
    """Gates off: FP32 exactly. Gates on: the Q/DQ graph ORT's quantizer makes with the same ranges."""
    import onnxruntime as ort

    from edgeq.quantize.insert import quantize_graph

    path = small_graph(tmp_path / "g.onnx")
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(4)]
    pol = ComponentPolicy(mode="int8", activation_matmul="int8", range_method="minmax")
    graph = onnx.load(str(path)).graph
    dec = decide(graph, pol)
    assert [d.node for d in dec if d.quantized] == ["conv1", "conv2", "fc", "scores"]
    tensors = tensors_to_calibrate(graph, dec)
    ranges = minmax_ranges(path, tensors, xs)
    sw = switchable_model(path, dec, pol)
    assert sw.nodes == ["conv1", "conv2", "fc", "scores"] and set(sw.tensors) == set(tensors)
    sess = ort.InferenceSession(sw.model.SerializeToString(), providers=["CPUExecutionProvider"])
    q = sw.qparam_feeds(ranges, pol.activation_symmetric)
    real = quantize_graph(path, dec, pol, ranges)
    exact = ort.SessionOptions()  # the Q/DQ graph's own arithmetic: fused int8 kernels saturate without VNNI
    exact.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    rsess = ort.InferenceSession(real.SerializeToString(), exact, providers=["CPUExecutionProvider"])
    for x in xs:
        ref = fp32_run(path, x)
        off = sess.run(["out_sample"], {"x": x, GATES: np.zeros(4, np.float32), **q})[0]
        np.testing.assert_allclose(off, ref, rtol=1e-5, atol=1e-5)  # only kernel choice differs
        on = sess.run(["out_sample"], {"x": x, GATES: np.ones(4, np.float32), **q})[0]
        want = rsess.run(None, {"x": x})[0]
        assert not np.allclose(on, ref)  # quantization does something
        sqnr = 10 * np.log10((want**2).sum() / max(((want - on) ** 2).sum(), 1e-30))
        assert sqnr > 40, sqnr  # the simulation agrees with the deployed Q/DQ graph


def evaluator(path, pol, tmp_path, n=6):
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(n)]
    graph = onnx.load(str(path)).graph
    dec = decide(graph, pol)
    ranges = minmax_ranges(path, tensors_to_calibrate(graph, dec), xs)
    samples = [EvalSample({"x": x}, fp32_run(path, x), i % 2) for i, x in enumerate(xs)]
    sw = switchable_model(path, dec, pol)
    return Evaluator(sw, samples, [ranges, ranges], pol.activation_symmetric, tmp_path), dec


def test_sensitivity_finds_the_outlier_layer_and_mixed_precision_meets_a_goal(tmp_path):
    """conv1 has one channel 300x larger that conv2 ignores: conv2's input range, set by that channel,
    leaves the channels that matter a few int8 steps."""
    path = small_graph(tmp_path / "g.onnx", outlier=300.0)
    pol = ComponentPolicy(mode="int8", range_method="minmax", output_quantization=False)
    ev, dec = evaluator(path, pol, tmp_path)
    n = len(ev.sw.nodes)
    assert (ev.sqnr(np.zeros(n)) > 100).all()  # all gates off: FP32 up to kernel rounding
    macs = count_macs(path, ev.samples[0].feeds, [d.node for d in dec])
    base, rows = measure(ev, dec, macs, {"scores"})
    assert rows[0].node == "conv2" and rows[0].float_gain_db > 3  # ranked first
    assert [r.float_gain_db for r in rows] == sorted((r.float_gain_db for r in rows), reverse=True)
    assert all(r.mac_share > 0 for r in rows if not r.activation_matmul)
    assert abs(sum(r.mac_share for r in rows) - 1.0) < 1e-9
    share = {r.node: r.mac_share for r in rows}
    goal = float(base.min()) + 3.0
    mp = search(ev, ev.sw, share, goal, max_float_share=1.0, log=lambda *_: None)
    assert mp.met and mp.float_nodes[0]["node"] == "conv2"
    assert mp.curve[-1]["worst_db"] >= goal and len(mp.curve) == len(mp.float_nodes) + 1
    # a cap on the float share that conv2 alone exceeds: the search says the goal is not met
    capped = search(ev, ev.sw, share, goal, max_float_share=share["conv2"] / 2, log=lambda *_: None)
    assert "conv2" not in [f["node"] for f in capped.float_nodes]
    assert all(c["float_share"] <= share["conv2"] / 2 + 1e-12 for c in capped.curve)


def test_goal_already_met_leaves_everything_quantized(tmp_path):
    path = small_graph(tmp_path / "g.onnx")
    ev, _ = evaluator(path, ComponentPolicy(mode="int8", range_method="minmax"), tmp_path)
    mp = search(ev, ev.sw, {}, goal_db=-100.0, max_float_share=0.1, log=lambda *_: None)
    assert mp.met and mp.float_nodes == [] and len(mp.curve) == 1


@pytest.mark.parametrize("act", ["uint8", "int8"])
def test_qparam_feeds_follow_the_activation_type(tmp_path, act):
    path = small_graph(tmp_path / "g.onnx")
    pol = ComponentPolicy(mode="int8", activation_type=act, activation_symmetric=act == "int8")
    graph = onnx.load(str(path)).graph
    dec = decide(graph, pol)
    sw = switchable_model(path, dec, pol)
    feeds = sw.qparam_feeds({t: (-1.0, 3.0) for t in sw.tensors}, pol.activation_symmetric)
    zp = feeds[f"edgeq_zp/{sw.tensors[0]}"]
    assert zp.dtype == np.dtype(act)
    assert (zp == 0) if act == "int8" else (zp == 64)  # 1/(4/255) = 63.75 -> 64


# -- shortcut splitting ---------------------------------------------------------------------------
def concat_graph(path, scale_b: float):
    """Two branches a, b (b scaled by scale_b) -> Concat(channels) -> Conv 1x1 and GroupNorm-like reader."""
    rng = np.random.default_rng(4)
    inits = [
        numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "wa"),
        numpy_helper.from_array(rng.standard_normal((5, 2, 3, 3)).astype(np.float32) * scale_b, "wb"),
        # b's larger range is scaled back down: both halves matter equally to the output
        numpy_helper.from_array(
            rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
            * np.r_[np.ones(3), np.full(5, 1 / scale_b)][None, :, None, None].astype(np.float32),
            "wc",
        ),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="branch_a", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wb"], ["b"], name="branch_b", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "wc", "bc"], ["sc"], name="conv_shortcut"),
        helper.make_node("ReduceMean", ["cat"], ["m"], name="norm_like", keepdims=1),
        helper.make_node("Add", ["sc", "m"], ["out_sample"], name="add"),
    ]
    g = helper.make_graph(
        nodes,
        "cat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, "h", "w"])],
        [helper.make_tensor_value_info("out_sample", TensorProto.FLOAT, None)],
        inits,
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_split_concat_conv_is_exact_and_gives_each_half_its_scale(tmp_path):
    import onnxruntime as ort

    from edgeq.quantize.insert import quantize_graph
    from edgeq.quantize.split import concat_convs, plan_splits, split_decisions, write_split

    path = concat_graph(tmp_path / "g.onnx", scale_b=40.0)
    pol = ComponentPolicy(mode="int8", op_types=("Conv",), split_concat_convs=True, output_quantization=False)
    graph = onnx.load(str(path)).graph
    dec = decide(graph, pol)
    assert concat_convs(graph, dec) == {"conv_shortcut": ("a", "b")}
    tensors = tensors_to_calibrate(graph, dec, pol)
    assert {"a", "b", "cat"} <= set(tensors)  # the halves are calibrated for the split decision
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((1, 2, 6, 6)).astype(np.float32) for _ in range(3)]
    ranges = minmax_ranges(path, tensors, xs)
    assert plan_splits(graph, dec, ranges, min_ratio=1e6) == []  # alike enough: one scale
    splits = plan_splits(graph, dec, ranges, min_ratio=2.0)
    assert [s.conv for s in splits] == ["conv_shortcut"] and splits[0].ratio > 10
    write_split(path, splits, tmp_path / "split" / "model.onnx")
    split_path = tmp_path / "split" / "model.onnx"
    m = onnx.load(str(split_path))
    names = [n.name for n in m.graph.node]
    assert "conv_shortcut" not in names and {"conv_shortcut/split0", "conv_shortcut/split1"} <= set(names)
    for x in xs:  # exact up to float summation order
        np.testing.assert_allclose(fp32_run(split_path, x), fp32_run(path, x), rtol=1e-5, atol=1e-4)
    sdec = split_decisions(dec, splits)
    assert [d.node for d in sdec if d.quantized] == [
        "branch_a",
        "branch_b",
        "conv_shortcut/split0",
        "conv_shortcut/split1",
    ]
    assert "ranges differ" in next(d.reason for d in sdec if d.node == "conv_shortcut/split1")

    def qdq_sqnr(p, decisions):
        q = quantize_graph(p, decisions, pol, ranges)
        s = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
        sig = err = 0.0
        for x in xs:
            ref = fp32_run(path, x)
            got = s.run(["out_sample"], {"x": x})[0]
            sig, err = sig + (ref**2).sum(), err + ((ref - got) ** 2).sum()
        return 10 * np.log10(sig / err), q

    before, _ = qdq_sqnr(path, dec)
    after, q = qdq_sqnr(split_path, sdec)
    assert after > before + 3, (before, after)  # the small half is no longer crushed by the large one
    scales = {i.name for i in q.graph.initializer if i.name.endswith("_scale")}
    assert {"a_scale", "b_scale"} <= scales


# -- SmoothQuant ----------------------------------------------------------------------------------
def ln_graph(path):
    """LayerNorm (with outlier channels in gamma) -> q/k/v MatMuls, plus a Shape reader; and a second
    LayerNorm that also feeds an Add (not smoothable)."""
    rng = np.random.default_rng(6)
    gamma = np.ones(8, np.float32)
    gamma[[1, 5]] = 60.0  # outlier channels, as transformer LayerNorms have
    inits = [
        numpy_helper.from_array(gamma, "gamma"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "beta"),
        numpy_helper.from_array(np.ones(8, np.float32), "gamma2"),
    ] + [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32) * 0.3, f"w{k}") for k in "qkvo"]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], name="norm1", axis=-1),
        helper.make_node("Shape", ["ln"], ["shp"], name="shape"),
        *[helper.make_node("MatMul", ["ln", f"w{k}"], [k], name=f"to_{k}") for k in "qkv"],
        helper.make_node("Add", ["q", "k"], ["qk"], name="addqk"),
        helper.make_node("Add", ["qk", "v"], ["h"], name="addv"),
        helper.make_node("LayerNormalization", ["h", "gamma2"], ["ln2"], name="norm2", axis=-1),
        helper.make_node("MatMul", ["ln2", "wo"], ["o"], name="to_o"),
        helper.make_node("Add", ["o", "ln2"], ["out_sample"], name="residual"),
    ]
    g = helper.make_graph(
        nodes,
        "ln",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8])],
        [helper.make_tensor_value_info("out_sample", TensorProto.FLOAT, None)],
        inits,
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_smoothquant_folds_into_layernorm_exactly_and_flattens_outliers(tmp_path):
    import onnxruntime as ort

    from edgeq.quantize.smooth import channel_absmax, sites, write_smoothed

    path = ln_graph(tmp_path / "g.onnx")
    pol = ComponentPolicy(mode="int8", op_types=("MatMul",), output_quantization=False)
    graph = onnx.load(str(path)).graph
    dec = decide(graph, pol)
    found = sites(graph, dec)
    assert [(s.norm, s.matmuls) for s in found] == [("norm1", ("to_q", "to_k", "to_v"))]  # norm2 also feeds an Add
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((1, 16, 8)).astype(np.float32) for _ in range(4)]
    act = channel_absmax(path, ["ln"], [{"x": x} for x in xs])
    assert act["ln"].shape == (8,) and act["ln"][[1, 5]].min() > 10 * np.delete(act["ln"], [1, 5]).max()
    dst = tmp_path / "s" / "model.onnx"
    report = write_smoothed(path, found, act, 0.5, dst)
    assert report["norm1"]["max"] > 3 * report["norm1"]["min"]
    assert len([n for n in onnx.load(str(dst)).graph.node]) == len(graph.node)  # no runtime op added
    for x in xs:
        np.testing.assert_allclose(fp32_run(dst, x), fp32_run(path, x), rtol=1e-4, atol=1e-4)
    smoothed = channel_absmax(dst, ["ln"], [{"x": x} for x in xs])["ln"]
    assert smoothed.max() / smoothed.min() < act["ln"].max() / act["ln"].min() / 3  # outliers flattened

    def w8a8_sqnr(p):
        from edgeq.quantize.insert import quantize_graph

        d = decide(onnx.load(str(p)).graph, pol)
        ranges = minmax_ranges(p, tensors_to_calibrate(onnx.load(str(p)).graph, d), xs)
        s = ort.InferenceSession(
            quantize_graph(p, d, pol, ranges).SerializeToString(), providers=["CPUExecutionProvider"]
        )
        sig = err = 0.0
        for x in xs:
            ref, got = fp32_run(path, x), s.run(["out_sample"], {"x": x})[0]
            sig, err = sig + (ref**2).sum(), err + ((ref - got) ** 2).sum()
        return 10 * np.log10(sig / err)

    assert w8a8_sqnr(dst) > w8a8_sqnr(path) + 3


def test_macs_from_symbolic_shapes_equal_those_of_a_run(tiny_exports, monkeypatch):
    """The UNet's MACs from ONNX Runtime's symbolic shape inference (no weight read, no activation
    held) are those of a real run with every counted node's output, at the CFG batch of 2."""
    from edgeq.quantize import sensitivity as sens
    from edgeq.quantize.policy import constant_names

    path = tiny_exports["sd15"] / "unet" / "model.onnx"
    g = onnx.load(str(path), load_external_data=False).graph
    const = constant_names(g)
    nodes = [n.name for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in const]
    nodes += [n.name for n in g.node if n.op_type == "MatMul" and n.input[1] not in const][:2]  # attention
    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
        "timestep": np.array(500.0, np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32)).astype(np.float32),
    }
    used = []
    real = sens.symbolic_shapes
    monkeypatch.setattr(sens, "symbolic_shapes", lambda *a: used.append(real(*a)) or used[-1])
    symbolic = count_macs(path, feeds, nodes)
    assert len(used) == 1 and used[0] is not None  # every shape resolved symbolically
    monkeypatch.setattr(sens, "symbolic_shapes", lambda *a: None)  # the run decides
    assert symbolic == count_macs(path, feeds, nodes)
    assert len(symbolic) == len(nodes) and all(v > 0 for v in symbolic.values())
