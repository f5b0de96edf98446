"""Memory of the checks: per-group graphs held one at a time, calls and images in group order."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

# A Q/DQ convolution stack with ~45 MB of int8 weights, saved as four "group" graphs that differ in
# their activation scales, as per-group graphs do; the child runs one call per group through edgeq's
# runner for per-group graphs and says how much its resident memory grew (Linux /proc).
CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeq.runtime.sessions import OrtRunner, grouped, one_group_at_a_time

    root, mode = Path(sys.argv[1]), sys.argv[2]
    C, n = 512, 20
    w = np.random.default_rng(0).integers(-127, 127, (C, C, 3, 3)).astype(np.int8)
    graphs = []
    for g in range(4):
        path = root / f"g{g}.onnx"
        if not path.exists():
            nodes, inits, prev = [], [], "sample"
            for i in range(n):
                inits += [
                    numpy_helper.from_array(w, f"w{i}"),
                    numpy_helper.from_array(np.full(C, 0.01, np.float32), f"ws{i}"),
                    numpy_helper.from_array(np.zeros(C, np.int8), f"wz{i}"),
                    numpy_helper.from_array(np.array(0.05 * (g + 1), np.float32), f"as{i}"),
                    numpy_helper.from_array(np.array(0, np.int8), f"az{i}"),
                ]
                nodes += [
                    helper.make_node("QuantizeLinear", [prev, f"as{i}", f"az{i}"], [f"q{i}"]),
                    helper.make_node("DequantizeLinear", [f"q{i}", f"as{i}", f"az{i}"], [f"d{i}"]),
                    helper.make_node("DequantizeLinear", [f"w{i}", f"ws{i}", f"wz{i}"], [f"dw{i}"], axis=0),
                    helper.make_node("Conv", [f"d{i}", f"dw{i}"], [f"y{i}"], pads=[1, 1, 1, 1]),
                ]
                prev = f"y{i}"
            nodes.append(helper.make_node("Identity", [prev], ["out_sample"]))
            x = helper.make_tensor_value_info("sample", TensorProto.FLOAT, [1, C, 8, 8])
            t = helper.make_tensor_value_info("timestep", TensorProto.FLOAT, [])
            nodes.append(helper.make_node("Identity", ["timestep"], ["t_out"]))
            y = helper.make_tensor_value_info("out_sample", TensorProto.FLOAT, [1, C, 8, 8])
            to = helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [])
            graph = helper.make_graph(nodes, "g", [x, t], [y, to], inits)
            onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        graphs.append((path, {"index": g, "t_min": 250.0 * g, "t_max": 250.0 * g + 249}))
    def rss_mb():
        return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024

    base = rss_mb()
    x = np.random.default_rng(1).standard_normal((1, C, 8, 8)).astype(np.float32)
    keep = mode.endswith("-keep")  # keep every output, as the verification bundle does
    mode = mode.removesuffix("-keep")
    if mode == "one":
        with one_group_at_a_time():
            runner = grouped(OrtRunner, graphs)
    elif mode == "single":  # one graph alone, the baseline: what a session costs
        runner, graphs = grouped(OrtRunner, graphs[:1]), graphs[:1]
    else:
        runner = grouped(OrtRunner, graphs)
    sums, kept = [], []
    for g in range(len(graphs)):
        out = runner.run({"sample": x, "timestep": np.array(250.0 * g + 10, np.float32)})["out_sample"]
        sums.append(float(np.abs(out).sum()))
        if keep:
            kept.append(out)
        del out
    print(json.dumps({"delta_mb": rss_mb() - base, "loads": getattr(runner, "loads", None),
                      "sums": sums}))
    """
)


def _child(root: Path, mode: str) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, str(root), mode], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_per_group_graphs_one_at_a_time_hold_one_copy_of_the_weights(tmp_path):
    """Four per-group graphs of ~45 MB of int8 weights each: all loaded, the process holds four sessions;
    one at a time, what one graph alone costs, and the outputs are the same."""
    all_loaded = _child(tmp_path, "all")
    one = _child(tmp_path, "one")
    single = _child(tmp_path, "single")
    assert one["loads"] == 4
    assert one["sums"] == all_loaded["sums"] and single["sums"] == all_loaded["sums"][:1]
    extra_all = all_loaded["delta_mb"] - single["delta_mb"]  # three more sessions: big enough to see
    extra_one = one["delta_mb"] - single["delta_mb"]
    assert extra_all > 100, (all_loaded, single)
    assert extra_one < 0.25 * extra_all, (one, all_loaded, single)
    # the outputs kept by the caller do not keep the dropped sessions' memory alive (an array ONNX
    # Runtime hands over lives in its session's arena: the SD1.5 bundle's 22 kept outputs held 12 GB)
    kept = _child(tmp_path, "one-keep")
    assert kept["sums"] == all_loaded["sums"]
    assert kept["delta_mb"] - single["delta_mb"] < 0.25 * extra_all, (kept, all_loaded, single)


def test_the_arena_gives_its_free_memory_back_after_each_call(tmp_path):
    """A small graph with large activations (as a VAE decoder at 512 px): eight 64 MB tensors live at
    once. ONNX Runtime's arena keeps them after the call; edgeq's runner and its calibration sessions
    hand them back, same outputs."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgeq.runtime.sessions import OrtRunner

    n = 8
    inits = [numpy_helper.from_array(np.array(1.0 + i, np.float32), f"c{i}") for i in range(n)]
    nodes = [helper.make_node("Mul", ["x", f"c{i}"], [f"y{i}"]) for i in range(n)]
    nodes.append(helper.make_node("Sum", [f"y{i}" for i in range(n)], ["out"]))
    shape = [1, 16, 1024, 1024]
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)],
        inits,
    )
    path = tmp_path / "wide.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = np.ones(shape, np.float32)

    def rss_mb():
        return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the eight tensors
    plain = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    base = rss_mb()
    want = plain.run(None, {"x": x})[0].copy()
    held_plain = rss_mb() - base
    del plain

    runner = OrtRunner(path, optimize=False)
    assert runner.arena
    base = rss_mb()
    got = runner.run({"x": x})["out"]
    held = rss_mb() - base
    assert np.array_equal(got, want)
    assert held_plain > 300, held_plain  # the arena kept most of the 512 MB
    # the output, its copy and the arena region that held it when the call ended (measured 288 MB
    # against 737 MB)
    assert held < 0.5 * held_plain, (held, held_plain)

    # the calibration's sessions (the capture's UNet, the statistics) too, with a tensor as an output
    from edgeq.calibrate.collect import augmented_session, run_shrinking

    # (their arena keeps less than the plain arena, and no more after later calls: measured 478, 350,
    # 350 MB against 737)
    stats = augmented_session(path, ["y3"], arena=True)
    # the process's shared arena, grown by what is asked (the SD1.5 capture's first call peaked at
    # 8.09 GB with ONNX Runtime's doubling chunks and 6.28 GB with it: use_shared_arena)
    assert stats.get_session_options().get_session_config_entry("session.use_env_allocators") == "1"
    base = rss_mb()
    kept = []
    for _ in range(3):
        out, y3 = run_shrinking(stats, ["out", "y3"], {"x": x})
        assert np.array_equal(out, want) and np.array_equal(y3, x * 4)
        del out, y3
        kept.append(rss_mb() - base)
    assert max(kept) < 0.8 * held_plain and kept[2] <= kept[0], (kept, held_plain)


def test_lockstep_generation_makes_the_same_images(tiny_exports):
    from edgeq.runtime.pipeline import GenerateOptions, Pipeline

    pipe = Pipeline(tiny_exports["sd15"])
    opts = [GenerateOptions(prompt=p, seed=s, steps=3) for p, s in (("a red cat", 1), ("a blue dog", 2))]
    many = pipe.generate_many(opts)
    for o, img in zip(opts, many):
        assert np.array_equal(img, pipe.generate(o))


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_a_low_memory_pipeline_holds_one_stage_at_a_time_and_makes_the_same_images(tiny_exports, family):
    """``low_memory``: text encoders, then the UNet, then the VAE decoder, each loaded once per
    ``generate_many`` and alone in memory while it runs (the build's host INT8 images at SDXL 1024 px
    peaked 21.3 GB with the whole pipeline loaded); the images are the eager pipeline's."""
    from edgeq.runtime.pipeline import GenerateOptions, Pipeline
    from edgeq.runtime.sessions import OrtRunner

    seen: list[tuple[str, frozenset]] = []
    loads: list[str] = []
    holder: dict[str, Pipeline] = {}

    class Watched(OrtRunner):
        def __init__(self, path):
            super().__init__(path)
            self.name = Path(path).parent.name
            loads.append(self.name)

        def run(self, feeds):
            seen.append((self.name, frozenset(holder["pipe"].runners)))
            return super().run(feeds)

    opts = [GenerateOptions(prompt=p, seed=s, steps=3) for p, s in (("a red cat", 1), ("a blue dog", 2))]
    want = Pipeline(tiny_exports[family]).generate_many(opts)
    pipe = holder["pipe"] = Pipeline(
        tiny_exports[family], runners={"onnxruntime": lambda b, i: Watched(b / i["path"])}, low_memory=True
    )
    assert not pipe.runners  # nothing loaded before it is used
    got = pipe.generate_many(opts)
    assert all(np.array_equal(a, b) for a, b in zip(want, got))
    encoders = {"text_encoder", "text_encoder_2"} if family == "sdxl" else {"text_encoder"}
    assert sorted(loads) == sorted([*encoders, "unet", "vae_decoder"])  # each once
    for name, loaded in seen:
        allowed = encoders if name.startswith("text_encoder") else {name}
        assert loaded <= allowed, (name, loaded)
    assert [n for n, _ in seen].count("unet") == 2 * 3 and seen[-1][0] == "vae_decoder"

    # the last reference gone, its runners go at once, not at the collector's next run (a closure over
    # the pipeline kept 15 GB of an SDXL build's OpenVINO pipeline beside the next check's child)
    import gc
    import weakref

    decoder = weakref.ref(pipe.runners["vae_decoder"])
    gc.disable()
    try:
        del pipe, holder["pipe"]
        assert decoder() is None
    finally:
        gc.enable()


def test_every_graph_runs_with_the_arena_and_computes_what_a_plain_session_does(tiny_exports, tmp_path):
    """Large graphs too run with ONNX Runtime's memory arena (handed back after each call): the same
    outputs as a session without it. A graph's weights count its external data file."""
    import onnxruntime as ort

    from edgeq.runtime import sessions

    (tmp_path / "model.g0.onnx").write_bytes(b"x" * 10)  # a group graph and the data file it shares
    (tmp_path / "model.onnx_data").write_bytes(b"x" * 1000)
    assert sessions.weight_bytes(tmp_path / "model.g0.onnx") == 1010
    path = tiny_exports["sd15"] / "unet" / "model.onnx"
    feeds = {
        "sample": np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32),
        "timestep": np.array(500.0, np.float32),
        "encoder_hidden_states": np.random.default_rng(1).standard_normal((2, 77, 32)).astype(np.float32),
    }
    runner = sessions.OrtRunner(path)
    assert runner.arena and runner.session.get_session_options().enable_cpu_mem_arena
    opts = ort.SessionOptions()
    opts.enable_cpu_mem_arena = False
    plain = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    want = dict(zip(runner.output_names, plain.run(runner.output_names, feeds)))
    for _ in range(2):
        got = runner.run(feeds)
        assert all(np.array_equal(got[k], want[k]) for k in want)


def test_large_batched_unet_calls_run_one_item_at_a_time(tiny_exports, monkeypatch):
    """A batched UNet call over SPLIT_AREA latent positions or more runs as one call per batch item
    (the classifier-free-guidance pair streams half the attention scores through memory at once):
    the same outputs as the pair at once, to float rounding; smaller calls, batch-1 calls and the
    timestep (no batch axis) are left alone."""
    from edgeq.runtime import sessions

    path = tiny_exports["sd15"] / "unet" / "model.onnx"
    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((2, 4, 16, 16)).astype(np.float32),
        "timestep": np.array(500.0, np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32)).astype(np.float32),
    }
    runner = sessions.OrtRunner(path)
    assert runner.splits
    shapes: list[tuple] = []
    real = runner.session

    class Spy:
        def __getattr__(self, name):
            return getattr(real, name)

        def run(self, names, given, *rest):
            shapes.append(given["sample"].shape)
            return real.run(names, given, *rest)

    runner.session = Spy()
    whole = runner.run(feeds)["out_sample"]
    assert shapes == [(2, 4, 16, 16)]  # under SPLIT_AREA (64 x 64 positions): the pair at once
    monkeypatch.setattr(sessions, "SPLIT_AREA", 16 * 16)
    split = runner.run(feeds)["out_sample"]
    assert shapes[1:] == [(1, 4, 16, 16), (1, 4, 16, 16)]
    assert split.shape == whole.shape
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-5)
    runner.run({k: (v[:1] if v.ndim else v) for k, v in feeds.items()})
    assert shapes[3:] == [(1, 4, 16, 16)]


def test_qdq_graphs_run_the_batch_at_once(tmp_path):
    """A Q/DQ graph is not split (its int8 kernels were no faster one item at a time)."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    from edgeq.runtime import sessions

    dims = ["batch", 4, "height", "width"]
    nodes = [
        h.make_node("QuantizeLinear", ["sample", "s", "z"], ["q"]),
        h.make_node("DequantizeLinear", ["q", "s", "z"], ["out_sample"]),
    ]
    inits = [h.make_tensor("s", T.FLOAT, [], [0.1]), h.make_tensor("z", T.UINT8, [], [128])]
    graph = h.make_graph(
        nodes,
        "qdq",
        [h.make_tensor_value_info("sample", T.FLOAT, dims)],
        [h.make_tensor_value_info("out_sample", T.FLOAT, dims)],
        inits,
    )
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), tmp_path / "q.onnx")
    assert sessions.OrtRunner(tmp_path / "q.onnx").splits is False
    float_graph = h.make_graph([h.make_node("Identity", ["sample"], ["out_sample"])], "f", graph.input, graph.output)
    onnx.save(h.make_model(float_graph, opset_imports=[h.make_opsetid("", 17)]), tmp_path / "f.onnx")
    assert sessions.OrtRunner(tmp_path / "f.onnx").splits is True


def test_isolated_steps_run_in_a_child_and_keep_their_errors():
    """run_isolated: the value comes back from another process; an EdgeqError keeps its message and
    hint; a crash is an error naming the step."""
    import os
    import signal

    import pytest

    from edgeq.errors import EdgeqError
    from edgeq.isolate import run_isolated
    from edgeq.profiles import load_profile

    assert run_isolated("pid", os.getpid) != os.getpid()
    with pytest.raises(EdgeqError) as e:
        run_isolated("a profile", load_profile, "no-such-target")
    assert "no-such-target" in e.value.message and e.value.hint
    with pytest.raises(RuntimeError, match="the crash failed in a child process"):
        run_isolated("the crash", os._exit, 3)
    with pytest.raises(EdgeqError) as e:  # what the out-of-memory killer does to a child
        run_isolated("the statistics", signal.raise_signal, 9)
    assert e.value.message == "the statistics was killed (SIGKILL) in its child process"
    assert "out-of-memory" in e.value.hint


def test_qdq_insertion_in_a_child_writes_the_same_graph(tiny_exports, tmp_path):
    """A large graph's Q/DQ insertion runs in a child process (the quantizer's memory goes back to the
    system when it exits): the graph it writes, and the model read back for the per-group graphs, are
    the ones the in-process quantizer makes. The MAC count and the shortcut split go through the same
    ``run_for_graph``: here for a small graph, in a child for a large one."""
    import os

    import onnx

    from edgeq.isolate import is_large, run_for_graph
    from edgeq.profiles import load_profile
    from edgeq.quantize.policy import decide, tensors_to_calibrate
    from edgeq.stages.qdq import qdq_model, write_qdq

    fp32 = tiny_exports["sd15"] / "unet" / "model.onnx"
    assert not is_large(fp32)  # tiny: in process unless asked
    assert run_for_graph(fp32, "pid", os.getpid) == os.getpid()
    assert run_for_graph(fp32, "pid", os.getpid, isolate=True) != os.getpid()
    policy = load_profile("ort-cpu").policy("unet")
    graph = onnx.load(str(fp32), load_external_data=False).graph
    decisions = decide(graph, policy)
    ranges = {
        t: (-1.0 - i * 1e-3, 2.0 + i * 1e-3) for i, t in enumerate(tensors_to_calibrate(graph, decisions, policy))
    }
    write_qdq(fp32, decisions, policy, ranges, tmp_path / "here" / "model.onnx", isolate=False)
    write_qdq(fp32, decisions, policy, ranges, tmp_path / "child" / "model.onnx", isolate=True)
    for name in ("model.onnx", "model.onnx_data"):
        assert (tmp_path / "here" / name).read_bytes() == (tmp_path / "child" / name).read_bytes()
    here = qdq_model(fp32, decisions, policy, ranges, tmp_path / "s1", isolate=False)
    child = qdq_model(fp32, decisions, policy, ranges, tmp_path / "s2", isolate=True)
    assert not (tmp_path / "s2").exists()  # the child's files are gone once read back
    assert here.graph.node == child.graph.node
    assert {i.name: i.raw_data for i in here.graph.initializer} == {i.name: i.raw_data for i in child.graph.initializer}


def test_statistics_split_into_passes_give_the_same_histograms(tiny_exports, capsys, monkeypatch):
    """Where one call's calibrated activations would not fit under the memory ceiling, the tensors run
    in parts, one pass over the calls per part: the sizes are predicted from two shrunk runs without
    ever holding the full-size set (never under the real size, at most 30% over in all), and the
    histograms are exactly the ones of one pass."""
    import onnx
    import pytest

    from edgeq.calibrate.collect import (
        ACTIVATION_SHARE,
        augmented_session,
        collect,
        plan_parts,
        predict_sizes,
        split_by_size,
    )
    from edgeq.errors import EdgeqError
    from edgeq.profiles import load_profile
    from edgeq.quantize.policy import decide, tensors_to_calibrate

    fp32 = tiny_exports["sd15"] / "unet" / "model.onnx"
    policy = load_profile("openvino").policy("unet")  # int8 attention: the scores are calibrated too
    graph = onnx.load(str(fp32), load_external_data=False).graph
    tensors = tensors_to_calibrate(graph, decide(graph, policy), policy)
    assert any("MatMul" in t or "Softmax" in t for t in tensors)
    rng = np.random.default_rng(0)
    calls = [
        (
            s,
            {
                "sample": rng.standard_normal((2, 4, 32, 32)).astype(np.float32),
                "timestep": np.array(900.0 - 400 * s, np.float32),
                "encoder_hidden_states": rng.standard_normal((2, 77, 32)).astype(np.float32),
            },
        )
        for s in range(3)
    ]

    sess = augmented_session(fp32, tensors)
    one = {k: v[:1] for k, v in calls[0][1].items() if v.ndim}
    one["timestep"] = calls[0][1]["timestep"]
    actual = {t: o.nbytes for t, o in zip(tensors, sess.run(tensors, one))}
    predicted = predict_sizes(sess, tensors, one)
    assert predicted is not None
    assert all(predicted[t] >= actual[t] for t in tensors)
    assert sum(predicted.values()) <= 1.3 * sum(actual.values())
    assert predict_sizes(sess, tensors, {**one, "sample": one["sample"][..., :8, :8]}) is None  # too small to shrink
    # the graph's symbolic shapes give the sizes exactly, with nothing run (what the builds use)
    from edgeq.calibrate.collect import tensor_shapes

    shapes = tensor_shapes(fp32, tensors, one)
    assert {t: 4 * int(np.prod(shapes[t])) for t in tensors} == actual

    assert split_by_size(["a", "b", "c", "d"], {"a": 3, "b": 3, "c": 9, "d": 1}, 6) == [["a", "b"], ["c"], ["d"]]
    roomy = plan_parts(sess, tensors, calls, 2**50)
    assert roomy == [list(tensors)]
    from edgeq.stages import memory

    monkeypatch.setattr(memory, "tree_rss", lambda: 0)  # the ceiling is then all room for activations
    room = max(max(predicted.values()) * 1.2, sum(predicted.values()) / 3)  # the largest fits, not all
    ceiling = int(room / ACTIVATION_SHARE)
    parts = plan_parts(sess, tensors, calls, ceiling)
    assert len(parts) >= 2 and [t for p in parts for t in p] == list(tensors)
    from edgeq.runtime.sessions import weight_bytes

    by_shapes = plan_parts(
        None, tensors, calls, int(ceiling + weight_bytes(fp32)), graph=fp32
    )  # weights: not loaded yet
    assert len(by_shapes) >= 2 and [t for p in by_shapes for t in p] == list(tensors)
    with pytest.raises(EdgeqError, match="leaves no room for one call's largest calibrated tensor") as e:
        plan_parts(sess, tensors, calls, int(max(predicted.values()) / 2))
    assert "--max-memory" in e.value.hint

    whole = collect(fp32, tensors, calls, [900.0, 500.0, 100.0], 3, desc="")
    capsys.readouterr()
    split = collect(fp32, tensors, lambda: iter(calls), [900.0, 500.0, 100.0], 3, desc="stats", max_bytes=ceiling)
    assert "passes over the calls" in capsys.readouterr().out
    for t in tensors:
        for a, b in zip(whole.hists[t], split.hists[t]):
            assert np.array_equal(a.counts, b.counts) and (a.exp, a.lo, a.hi, a.n, a.sumsq) == (
                b.exp,
                b.lo,
                b.hi,
                b.n,
                b.sumsq,
            )


def test_a_capture_that_cannot_fold_drops_the_augmented_graph_before_a_full_size_call(tiny_exports, monkeypatch):
    """Where one call's calibrated tensors would not fit under the memory ceiling, the capture's UNet
    runs the plain graph from its first full-size call on: a graph with the tensors as extra outputs
    holds all of them during a call, fetched or not (at SDXL size and 1024 px, 24 GB: the kernel killed
    the build). Only the two shrunk runs that predict the sizes use the augmented graph; nothing is
    folded (the statistics are collected after the capture, in parts), and the noise prediction is the
    same as with the tensors as outputs, bit for bit."""
    import onnx

    from edgeq.calibrate import collect as collect_mod
    from edgeq.calibrate.collect import ACTIVATION_SHARE, CaptureStats, StatsRequest, predict_sizes
    from edgeq.profiles import load_profile
    from edgeq.quantize.policy import decide, tensors_to_calibrate
    from edgeq.stages import memory

    fp32 = tiny_exports["sd15"] / "unet" / "model.onnx"
    policy = load_profile("ort-cpu").policy("unet")
    graph = onnx.load(str(fp32), load_external_data=False).graph
    tensors = tensors_to_calibrate(graph, decide(graph, policy), policy)
    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((2, 4, 32, 32)).astype(np.float32),
        "timestep": np.array(900.0, np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32)).astype(np.float32),
    }
    one = {k: (v[:1] if v.ndim else v) for k, v in feeds.items()}
    predicted = predict_sizes(collect_mod.augmented_session(fp32, tensors), tensors, one)
    assert predicted is not None
    monkeypatch.setattr(memory, "tree_rss", lambda: 0)
    ceiling = int(max(max(predicted.values()) * 1.2, sum(predicted.values()) / 3) / ACTIVATION_SHARE)

    runs: list[tuple[int, tuple[int, ...]]] = []  # (graph outputs, sample shape) of every run
    real = collect_mod.augmented_session

    class Spy:
        def __init__(self, sess):
            self.sess = sess

        def __getattr__(self, name):
            return getattr(self.sess, name)

        def run(self, names, given, *rest):
            runs.append((len(self.sess.get_outputs()), given["sample"].shape))
            return self.sess.run(names, given, *rest)

    monkeypatch.setattr(collect_mod, "augmented_session", lambda *a, **k: Spy(real(*a, **k)))
    unet = CaptureStats(StatsRequest(fp32, tensors, {(0, 0), (0, 1)}, ceiling), 3)
    unet.begin(0)
    got = [unet.run(feeds)["out_sample"] for _ in range(3)]
    assert unet.fits is False and unet.partial() == (None, set())
    full = [n for n, shape in runs if shape[-1] == 32]
    assert full == [1] * 6  # three calls of two items, each on the plain graph
    assert all(shape[-1] < 32 for n, shape in runs if n > 1)  # the augmented graph: the shrunk runs only
    roomy = CaptureStats(StatsRequest(fp32, tensors, {(0, 0)}, 2**50), 3)
    roomy.begin(0)
    ref = roomy.run(feeds)["out_sample"]
    assert roomy.fits is True and all(np.array_equal(g, ref) for g in got)
    stats, folded = roomy.partial()
    assert folded == {(0, 0)} and stats is not None and stats.hists[tensors[0]][0].n > 0


def test_a_statistics_child_counts_the_whole_build_under_the_ceiling():
    """A child process (statistics, Q/DQ insertion) plans its memory against the ceiling of the whole
    build: the build process beside it counts. Counting only itself, the SDXL UNet's statistics child at
    1024 px planned 20 GB while the build held 4.5 GB more (23.1 GB of 24)."""
    from edgeq.isolate import run_isolated
    from edgeq.stages.memory import build_rss, tree_rss

    held = np.ones(300 * 2**20 // 8)  # 300 MB resident in this (the build's) process
    whole, own = run_isolated("build_rss", build_rss), run_isolated("tree_rss", tree_rss)
    assert whole - own >= 0.9 * held.nbytes
    assert abs(build_rss() - tree_rss()) < 0.05 * tree_rss()  # not in a child: this process's tree


def test_a_capture_frees_its_fp32_sessions_before_handing_memory_back(tiny_exports, tmp_path, monkeypatch):
    """When the calibration capture hands the C heap's free pages back (``release_memory``), its FP32
    pipeline's sessions are already freed: a UNet runner still held under a second name was freed only
    after that, and its memory stayed in the build process, 4.3 GB of an SDXL capture at 1024 px
    beside the statistics child (2026-12-04)."""
    import gc

    import onnx

    from edgeq.calibrate.capture import CaptureSettings, capture
    from edgeq.calibrate.collect import CaptureStats, StatsRequest
    from edgeq.runtime import sessions
    from edgeq.runtime.sessions import OrtRunner

    fp32 = tiny_exports["sd15"] / "unet" / "model.onnx"
    graph = onnx.load(str(fp32), load_external_data=False).graph
    outs = {o.name for o in graph.output}
    tensors = [n.output[0] for n in graph.node if n.op_type == "Conv" and n.output[0] not in outs][:8]
    settings = CaptureSettings(("a red circle",), 0, 2, 7.5, "ddim")
    alive: list[list[str]] = []
    real = sessions.release_memory

    def spy() -> None:
        gc.collect()
        alive.append([type(o).__name__ for o in gc.get_objects() if isinstance(o, (CaptureStats, OrtRunner))])
        real()

    monkeypatch.setattr(sessions, "release_memory", spy)
    capture(tiny_exports["sd15"], tmp_path / "cap", settings, stats=StatsRequest(fp32, tensors, {(0, 0)}))
    assert alive and alive[-1] == []


def test_run_with_low_memory_writes_the_same_image(target_build, tmp_path):
    """`edgeq run --low-memory` on an OpenVINO build (components loaded as the pipeline reaches them)."""
    from edgeq.cli.main import main

    out, _ = target_build("openvino")
    pngs = []
    for extra in ([], ["--low-memory"]):
        png = tmp_path / f"{len(extra)}.png"
        assert main(["run", str(out), "--prompt", "a red circle", "--steps", "3", "-o", str(png), *extra]) == 0
        pngs.append(png.read_bytes())
    assert pngs[0] == pngs[1]
