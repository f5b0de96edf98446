"""Group gains: one Q/DQ graph whose activation scales come from a runtime input, per timestep group."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgeq.profiles import load_profile
from edgeq.quantize.gains import GAINS_INPUT, add_gains, gain_table, group_scale, reference_ranges
from edgeq.quantize.insert import quantize_graph, read_activation_qparams
from edgeq.quantize.policy import decide, tensors_to_calibrate


def _ranges(tensors, scale: float, seed: int) -> dict[str, tuple[float, float]]:
    rng = np.random.default_rng(seed)
    return {t: (-scale * float(rng.uniform(0.1, 1.5)), scale * float(rng.uniform(0.5, 1.5))) for t in tensors}


def _feeds(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "sample": rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
        "timestep": np.array(500.0, np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32)).astype(np.float32),
    }


def _sqnr(ref: np.ndarray, x: np.ndarray) -> float:
    return float(
        10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / max(np.sum((ref - x).astype(np.float64) ** 2), 1e-30))
    )


def _setup(tiny_exports, target, family: str | None = None):
    import onnxruntime as ort

    path = tiny_exports["sd15"] / "unet" / "model.onnx"
    policy = load_profile(target).policy("unet").for_family(family)
    model = onnx.load(str(path))
    decisions = decide(model.graph, policy)
    tensors = tensors_to_calibrate(model.graph, decisions)
    for t in tensors:  # realistic ranges: the FP32 activations of two timesteps
        model.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = [_feeds(0), {**_feeds(1), "timestep": np.array(50.0, np.float32), "sample": 0.3 * _feeds(1)["sample"]}]
    per_group = []
    for f in feeds:
        outs = s.run(tensors, f)
        per_group.append({t: (float(o.min()), float(o.max())) for t, o in zip(tensors, outs)})
    shared = {t: (min(r[t][0] for r in per_group), max(r[t][1] for r in per_group)) for t in tensors}
    base = quantize_graph(path, decisions, policy, shared)
    fixed = read_activation_qparams(base, tensors)
    assert fixed and set(fixed) <= set(tensors)
    return path, policy, decisions, tensors, feeds, per_group, base, fixed


def _run(model: onnx.ModelProto, feeds: dict, level: str = "ORT_ENABLE_ALL") -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in s.get_inputs()}
    return s.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def _probe(model: onnx.ModelProto, tensors, level: str = "ORT_ENABLE_ALL"):
    """A run of ``model`` that returns each of ``tensors`` and its DequantizeLinear output (ORT's
    quantizer names it ``<t>_DequantizeLinear_Output``): ``run(feeds) -> (values, dequantized)``."""
    import onnxruntime as ort

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    names = list(tensors) + [f"{t}_DequantizeLinear_Output" for t in tensors]
    for t in names:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    s = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    n = len(tensors)

    def run(feeds: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
        outs = s.run(names, feeds)
        return outs[:n], outs[n:]

    return run


def _assert_quantized(got: np.ndarray, x: np.ndarray, scale: float, z: int, limits: tuple[int, int], name: str):
    """``got`` is ``x`` quantized with ``scale`` and zero point ``z`` (all but a few roundings)."""
    want = (np.clip(np.rint(x / scale) + z, *limits) - z) * scale
    assert np.mean(np.abs(got - want) > 1e-3 * scale) < 1e-3, name


def test_gains_graph_is_bit_exact_to_per_group_graphs_with_power_of_two_scales(tiny_exports):
    """TensorRT's flavour (symmetric int8 on inputs only): with group scales s * 2^k, every product
    and rounding in the gains graph is the per-group graph's, exactly."""
    path, policy, decisions, tensors, feeds, _, base, fixed = _setup(tiny_exports, "tensorrt")
    rng = np.random.default_rng(5)
    per_group = [
        {t: (-s * 127 * 2.0**k, s * 127 * 2.0**k) for t, (s, _) in fixed.items() for k in [int(rng.integers(-2, 2))]}
        for _ in feeds
    ]
    gains = gain_table(fixed, per_group, policy.activation_type, True, [{}, {}])
    assert {float(np.log2(v)) for v in gains.row(1)} <= {-2.0, -1.0, 0.0, 1.0, 2.0}
    gained = add_gains(onnx.ModelProto.FromString(base.SerializeToString()), gains.tensors)
    onnx.checker.check_model(gained)
    for g, f in enumerate(feeds):
        ref = quantize_graph(
            path, decisions, policy, reference_ranges(fixed, per_group, policy.activation_type, True)[g]
        )
        for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL"):
            assert _sqnr(_run(ref, f, level), _run(gained, {**f, GAINS_INPUT: gains.row(g)}, level)) > 100


@pytest.mark.parametrize("target", ["ort-cpu", "tensorrt"])
def test_gains_graph_quantizes_like_the_per_group_graphs(tiny_exports, target):
    """Asymmetric uint8 with output Q/DQ (ort-cpu) and symmetric int8 (tensorrt), realistic ranges.

    Every gained tensor, read back after its Q/DQ and multiplied by its output gain, is the tensor
    quantized with the group's scale and the fixed zero point. End to end the graphs differ only by
    the order of float sums, which moves a few roundings: the random test UNet amplifies those (the
    same per-group graph at two ORT optimisation levels differs as much), so end to end the test
    compares quality against FP32.
    """
    from edgeq.quantize.gains import _limits

    path, policy, decisions, tensors, feeds, per_group, base, fixed = _setup(tiny_exports, target)
    sym = policy.activation_symmetric
    gains = gain_table(fixed, per_group, policy.activation_type, sym, [{}, {}])
    gained = add_gains(onnx.ModelProto.FromString(base.SerializeToString()), gains.tensors)
    onnx.checker.check_model(gained)
    refs = reference_ranges(fixed, per_group, policy.activation_type, sym)
    limits = _limits(policy.activation_type, sym)
    k_all = len(gains.tensors)
    probe = _probe(gained, gains.tensors)
    fp32 = onnx.load(str(path))
    for g, f in enumerate(feeds):
        row = gains.row(g)
        ref_model = quantize_graph(path, decisions, policy, refs[g])
        ref_q = read_activation_qparams(ref_model, tensors)
        xs, dqs = probe({**f, GAINS_INPUT: row})
        for k, t in enumerate(gains.tensors):
            scale, z = ref_q[t]  # the per-group graph's scale is the gained one, its zero point the fixed one
            assert z == fixed[t][1]
            assert scale == pytest.approx(fixed[t][0] * row[k_all + k], rel=1e-5)
            _assert_quantized(dqs[k] * row[k_all + k], xs[k], scale, z, limits, t)
        # the graphs' own arithmetic (optimisation off): on x86 without VNNI, ORT's fused int8 kernels
        # saturate the per-group graph's 8-bit weights, while the gains graph's Mul keeps it unfused
        ex = "ORT_DISABLE_ALL"
        ref_db = _sqnr(_run(fp32, f), _run(ref_model, f, ex))
        gain_db = _sqnr(_run(fp32, f), _run(gained, {**f, GAINS_INPUT: row}, ex))
        assert abs(gain_db - ref_db) < 1.0, (ref_db, gain_db)
    ones = np.ones(2 * k_all, np.float32)  # unit gains: the fixed graph
    x = _run(fp32, feeds[0])
    unit = _run(gained, {**feeds[0], GAINS_INPUT: ones}, "ORT_DISABLE_ALL")
    assert abs(_sqnr(x, _run(base, feeds[0], "ORT_DISABLE_ALL")) - _sqnr(x, unit)) < 1.0
    w8 = lambda m: sorted(i.name for i in m.graph.initializer if i.data_type == onnx.TensorProto.INT8)  # noqa: E731
    assert w8(gained) == w8(base)  # one set of int8 weights


def test_gains_go_only_to_tensors_whose_groups_differ_by_min_bits(tiny_exports):
    """``min_bits``: a tensor takes a gain only when some group's scale is that many bits from the
    fixed one; the others keep the fixed scale (no Mul in the graph), and the kept ones quantize
    exactly as with every tensor gained. Nothing kept above the largest spread but the largest."""
    path, policy, _, _, feeds, per_group, base, fixed = _setup(tiny_exports, "openvino")
    sym = policy.activation_symmetric
    full = gain_table(fixed, per_group, policy.activation_type, sym, [{}, {}])
    k_all = len(full.tensors)
    spread = {  # as gain_table measures it (float64), not from the float32 table
        t: max(
            abs(np.log2(fixed[t][0] / group_scale(r[t], fixed[t][1], policy.activation_type, sym))) for r in per_group
        )
        for t in full.tensors
    }
    cut = sorted(set(spread.values()))
    b = float(np.mean(cut[len(cut) // 2 - 1 : len(cut) // 2 + 1]))  # between two spreads, never on one
    part = gain_table(fixed, per_group, policy.activation_type, sym, [{}, {}], min_bits=b)
    assert set(part.tensors) == {t for t, v in spread.items() if v >= b} and 0 < len(part.tensors) < k_all
    assert part.tensors == tuple(t for t in full.tensors if t in set(part.tensors))  # graph order kept
    for g in range(2):  # the kept tensors' gains are those of the full table
        want = {t: (full.row(g)[k], full.row(g)[k_all + k]) for k, t in enumerate(full.tensors)}
        k_part = len(part.tensors)
        assert [(part.row(g)[k], part.row(g)[k_part + k]) for k in range(k_part)] == [want[t] for t in part.tensors]
    assert not part.fallback and part.candidates == k_all and part.min_bits == b
    top = gain_table(fixed, per_group, policy.activation_type, sym, [{}, {}], min_bits=99.0)
    assert top.tensors == (max(spread, key=spread.get),) and top.fallback
    assert type(top).from_dict(top.to_dict()) == top

    muls = lambda m: sum(n.op_type == "Mul" and "edgeq_" in n.name for n in m.graph.node)  # noqa: E731
    gained_full = add_gains(onnx.ModelProto.FromString(base.SerializeToString()), full.tensors)
    gained = add_gains(onnx.ModelProto.FromString(base.SerializeToString()), part.tensors)
    onnx.checker.check_model(gained)
    assert 0 < muls(gained) < muls(gained_full)
    from edgeq.quantize.gains import _limits

    limits = _limits(policy.activation_type, sym)
    probe = _probe(gained, list(fixed), "ORT_DISABLE_ALL")
    k_part = len(part.tensors)
    for g, f in enumerate(feeds):
        row = part.row(g)
        xs, dqs = probe({**f, GAINS_INPUT: row})
        for k, t in enumerate(fixed):
            scale, z = fixed[t]
            got = dqs[k]  # ungained: the fixed graph's Q/DQ, untouched
            if t in part.tensors:  # the group's scale, as with every tensor gained
                j = part.tensors.index(t)
                scale, got = scale * row[k_part + j], dqs[k] * row[k_part + j]
            _assert_quantized(got, xs[k], scale, z, limits, t)


def test_attention_cores_take_no_gain_and_openvino_keeps_attention_fused(tiny_exports, tmp_path):
    """``gains_attention = false``: the attention cores' tensors (Q, K, V as they enter the two
    activation MatMuls, scores, probabilities, context) keep the fixed scale in every group whatever
    their spread; OpenVINO then runs every attention of the gains graph as it runs the shared graph's,
    where gains on them break the fusion. The projections' own outputs keep their gains."""
    from edgeq.quantize.gains import _limits, attention_tensors

    path, policy, _, _, feeds, per_group, base, fixed = _setup(tiny_exports, "openvino", "x86-vnni")
    assert policy.activation_matmul == "int8"  # the family whose attention MatMuls are int8
    assert load_profile("openvino").calibration.gains_attention is True  # the default; an option
    att = attention_tensors(base)
    n_softmax = sum(n.op_type == "Softmax" for n in base.graph.node)
    # per attention: scores, probabilities, context, and Q, K, V as they enter
    assert n_softmax and len(att) == 6 * n_softmax and att <= set(fixed)
    assert all("/attn1/" in t or "/attn2/" in t for t in att)
    args = (fixed, per_group, policy.activation_type, policy.activation_symmetric, [{}, {}])
    every = gain_table(*args)
    held = gain_table(*args, hold_back=att)
    assert set(held.tensors) == set(every.tensors) - att and held.held_back == len(att & set(every.tensors)) > 0
    assert held.candidates == every.candidates and type(held).from_dict(held.to_dict()) == held
    assert {t for t in held.tensors if "/to_q/" in t or "/to_k/" in t or "/to_v/" in t}  # still gained
    none = gain_table(*args, hold_back=set(every.tensors))  # the graph keeps one gain all the same
    assert len(none.tensors) == 1 and none.fallback and none.held_back == len(every.tensors) - 1

    # exact arithmetic: held-back tensors quantize with the fixed scale in every group, gained ones
    # with the group's
    gained = add_gains(onnx.ModelProto.FromString(base.SerializeToString()), held.tensors)
    names = sorted(att)[:6] + list(held.tensors[:3])
    probe, k_held = _probe(gained, names, "ORT_DISABLE_ALL"), len(held.tensors)
    limits = _limits(policy.activation_type, policy.activation_symmetric)
    for g, f in enumerate(feeds):
        row = held.row(g)
        xs, dqs = probe({**f, GAINS_INPUT: row})
        for k, t in enumerate(names):
            scale, got = fixed[t][0], dqs[k]
            if t in held.tensors:
                j = held.tensors.index(t)
                scale, got = scale * row[k_held + j], dqs[k] * row[k_held + j]
            _assert_quantized(got, xs[k], scale, fixed[t][1], limits, t)

    ov = pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install 'edgeq[openvino]'")

    def unfused_softmax(tensors) -> int:  # Softmax layers OpenVINO runs outside a fused subgraph
        m = onnx.ModelProto.FromString(base.SerializeToString())
        f = tmp_path / f"g{len(tensors)}.onnx"
        onnx.save(add_gains(m, tensors) if tensors else m, str(f))
        c = ov.Core().compile_model(str(f), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return sum(n.get_rt_info()["layerType"].astype(str) == "Softmax" for n in c.get_runtime_model().get_ops())

    shared = unfused_softmax(())  # 0 where this CPU's plugin fuses int8 attention (AVX-512 VNNI: all 14)
    if shared == n_softmax:
        pytest.skip("OpenVINO fuses no int8 attention on this CPU: nothing for the hold-back to keep")
    assert unfused_softmax(held.tensors) == shared  # the gains graph runs attention as the shared one does
    assert unfused_softmax(every.tensors) > shared  # what the hold-back is for


def test_attention_tensors_are_activation_by_activation_matmuls_only():
    """A MatMul reading a weight however it is stored (a DQ of an initializer behind a Transpose, a
    Reshape of a float initializer, both after their reader in node order as ORT's quantizer writes
    them) is a projection; one reading two activations is attention: its output, its Softmax and the
    quantized tensors it reads."""
    from onnx import helper, numpy_helper

    from edgeq.quantize.gains import attention_tensors

    inits = [
        numpy_helper.from_array(np.ones((4, 4), np.int8), "W"),
        numpy_helper.from_array(np.ones(16, np.float32), "Wf"),
        numpy_helper.from_array(np.array([4, 4], np.int64), "shape"),
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
    ]
    node = helper.make_node
    nodes = [
        node("MatMul", ["xd", "Wt"], ["proj"]),
        node("MatMul", ["xd", "Wr"], ["proj2"]),
        node("MatMul", ["xd", "kd"], ["scores"]),
        node("Softmax", ["scores"], ["probs"]),
        node("Transpose", ["Wd"], ["Wt"]),
        node("DequantizeLinear", ["W", "s", "z"], ["Wd"]),
        node("Reshape", ["Wf", "shape"], ["Wr"]),
        node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        node("QuantizeLinear", ["k", "s", "z"], ["kq"]),
        node("DequantizeLinear", ["kq", "s", "z"], ["kd"]),
    ]
    io = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [4, 4]) for n in ("x", "k", "probs")]
    model = helper.make_model(helper.make_graph(nodes, "g", io[:2], io[2:], inits))
    assert attention_tensors(model) == {"x", "k", "scores", "probs"}


def test_group_scale_keeps_the_zero_point_and_holds_the_range():
    s = group_scale((-1.0, 3.0), 64, "uint8", False)
    assert -64 * s <= -1.0 and (255 - 64) * s >= 3.0
    assert max(3.0 / ((255 - 64) * s), 1.0 / (64 * s)) == pytest.approx(1.0)  # the tightest such scale
    assert group_scale((-2.0, 1.0), 0, "int8", True) == pytest.approx(4.0 / 254)  # ONNX Runtime's symmetric scale
    assert group_scale((0.0, 0.0), 10, "uint8", False) == 1.0  # a constant-zero tensor: any scale, no division by 0


def test_tensor_classes_and_per_class_choice(tiny_exports):
    """Classes name the reader and the producer; the choice is coordinate ascent on a measurement,
    never below the all-default baseline, keeping the default on ties."""
    from edgeq.quantize.range_choice import choose, tensor_classes

    path = tiny_exports["sd15"] / "unet" / "model.onnx"
    policy = load_profile("ort-cpu").policy("unet")
    graph = onnx.load(str(path)).graph
    decisions = decide(graph, policy)
    tensors = tensors_to_calibrate(graph, decisions)
    classes = tensor_classes(graph, tensors, decisions)
    names = set(classes.values())
    assert {"Conv input from SiLU", "MatMul input from LayerNormalization", "Conv output", "MatMul output"} <= names
    by = {m: {t: (-float(k), float(k)) for t in tensors} for k, m in enumerate(["minmax", "percentile", "mse"], 1)}
    # a measurement where SiLU inputs like wide ranges (min-max: 1) and everything else likes mse (3)
    want = {c: ("minmax" if c == "Conv input from SiLU" else "mse") for c in names}

    def worst(r):
        return -sum(abs(r[t][1] - {"minmax": 1, "mse": 3}[want[classes[t]]]) for t in tensors)

    choice = choose(classes, by, worst, "mse", log=lambda *_: None)
    assert choice.winners == want
    assert choice.final_db == 0 and choice.baseline_db < 0
    assert all(choice.method_of(t) == want[classes[t]] for t in tensors)
    flat = choose(classes, by, lambda r: 1.0, "mse", log=lambda *_: None)  # ties: the default stays
    assert set(flat.winners.values()) == {"mse"} and flat.final_db == flat.baseline_db
