"""`edgeq build --target tensorrt` on a machine without TensorRT engines: the TensorRT-ready ONNX,
the rules, the CPU simulation and its gates, trtexec.sh, and exit code 4 (0 with --onnx-only)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import cli, run_without_torch
from onnx import TensorProto, numpy_helper

from edgeq.targets.base import ENGINES_NOT_BUILT
from edgeq.targets.tensorrt.engines import unavailable_reason
from edgeq.targets.tensorrt.options import TrtOptions
from edgeq.targets.tensorrt.packaging import shape_profiles
from edgeq.targets.tensorrt.runner import TrtRunner

CAN_BUILD_ENGINES = unavailable_reason() is None


@pytest.fixture(scope="module")
def trt_build(target_build):
    return target_build("tensorrt")


@pytest.mark.skipif(CAN_BUILD_ENGINES, reason="this machine can build TensorRT engines (see test_tensorrt_gpu.py)")
def test_without_gpu_the_build_exits_4_and_says_how_to_finish(trt_build):
    out, r = trt_build
    assert r.returncode == ENGINES_NOT_BUILT == 4, r.stdout[-2000:] + r.stderr[-2000:]
    assert "engines not built" in r.stderr and f"edgeq engines {out}" in r.stderr and "--onnx-only" in r.stderr
    for f in ("unet/model.onnx", "unet/model.onnx_data", "trtexec.sh", "trt_rules.txt", "quant_plan.json"):
        assert (out / f).is_file(), f
    for f in ("report.json", "report.md", "report.html", "report_cpu_simulation.json"):
        assert (out / f).is_file(), f
    m = json.loads((out / "manifest.json").read_text())
    assert m["engines_status"]["built"] is False and "CPU simulation" in m["engines_status"]["checks"]
    assert not list(out.rglob("*.plan"))
    for name, comp in m["components"].items():
        assert comp["runtime"] == "tensorrt-simulated", name
        assert comp["rule_violations"]["count"] == 0, name
    assert "no violations" in (out / "trt_rules.txt").read_text()


def test_simulated_gates_pass_and_include_the_rules(trt_build):
    out, _ = trt_build
    rep = json.loads((out / "report.json").read_text())
    assert rep["passed"] and all(g["passed"] for g in rep["gates"])
    assert any(g["metric"] == "tensorrt_rule_violations" and g["value"] == 0 for g in rep["gates"])
    assert len(rep["unet_groups"]) == 4 and min(r["sqnr_db"] for r in rep["unet_groups"]) >= 20.0
    assert "CPU simulation" in rep["engines"]["checks"]


def test_unet_graph_is_tensorrt_flavoured_fp16(trt_build):
    out, _ = trt_build
    m = onnx.load(str(out / "unet" / "model.onnx"))
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 19
    inits = {i.name: i for i in m.graph.initializer}
    qdq = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 50
    for n in qdq:
        zp = inits[n.input[2]]
        assert zp.data_type == TensorProto.INT8 and not numpy_helper.to_array(zp).any(), n.name
        assert inits[n.input[1]].data_type == TensorProto.FLOAT16, n.name  # DQ feeds FP16 convs directly
    floats = {i.data_type for i in m.graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)}
    assert TensorProto.FLOAT16 in floats
    # graph I/O stays FP32; the timestep reaches the sinusoidal projection without an FP16 round trip
    assert all(i.type.tensor_type.elem_type == TensorProto.FLOAT for i in m.graph.input)
    readers = [n for n in m.graph.node if "timestep" in n.input]
    assert readers and not any(n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT16 for n in readers), [
        n.name for n in readers
    ]
    # nothing but quantized ops reads a dequantized tensor
    prod = {o: n for n in m.graph.node for o in n.output}
    for n in m.graph.node:
        for i in n.input:
            if i in prod and prod[i].op_type == "DequantizeLinear":
                assert n.op_type in ("Conv", "MatMul", "Gemm"), (n.name, n.op_type)


def test_trtexec_script_has_profiles_with_cfg_doubling(trt_build):
    out, _ = trt_build
    text = (out / "trtexec.sh").read_text()
    assert text.count("trtexec \\") == 3 and "--stronglyTyped" in text and "--timingCacheFile=timing.cache" in text
    # tiny-sd: 32 px, VAE factor 4 -> 8x8 latents; batch [1, 1, 4] images -> UNet batch 1 / 2 / 8
    assert "--minShapes=sample:1x4x8x8" in text and "--optShapes=sample:2x4x8x8" in text
    assert "--maxShapes=sample:8x4x16x16,encoder_hidden_states:8x77x64" in text


def test_validate_command(trt_build, tmp_path):
    out, _ = trt_build
    r = cli("validate", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "unet/model.onnx" in r.stdout and "no violations" in r.stdout
    from test_trt_rules import _model, _qdq

    nodes, inits = [], []
    xq = _qdq("x", "a", zp=np.uint8(128), nodes=nodes, inits=inits)
    nodes.append(onnx.helper.make_node("Relu", [xq], ["out"], name="/relu"))
    onnx.save(_model(nodes, inits), str(tmp_path / "bad.onnx"))
    r = cli("validate", str(tmp_path / "bad.onnx"))
    assert r.returncode == 3 and "[zero-point] a_Q" in r.stdout and "[qdq-on-inputs] /relu" in r.stdout
    r = cli("validate", str(tmp_path / "missing.onnx"))
    assert r.returncode == 2 and "neither an .onnx file nor a build folder" in r.stderr


@pytest.mark.skipif(CAN_BUILD_ENGINES, reason="this machine can build TensorRT engines")
def test_engines_command_without_gpu_names_the_install(trt_build):
    out, _ = trt_build
    r = cli("engines", str(out))
    assert r.returncode == 4 and "engines need an NVIDIA GPU" in r.stderr and "edgeq[tensorrt]" in r.stderr


def test_simulated_build_runs_without_torch(trt_build, tmp_path):
    out, _ = trt_build
    png = tmp_path / "trt.png"
    r = run_without_torch(out, png, "a large red circle in the center on a blue background")
    assert r.returncode == 0, r.stderr
    assert png.stat().st_size > 0


@pytest.mark.skipif(CAN_BUILD_ENGINES, reason="this machine can build TensorRT engines")
def test_onnx_only_is_a_success(trt_build, tiny_sd_cache, tmp_path):
    out = tmp_path / "onnx-only"
    r = cli(
        "build", "tiny-sd", "--target", "tensorrt", "--onnx-only", "--out", str(out),
        "--cache-dir", str(tiny_sd_cache), "--num-calib", "16", "--num-heldout", "4", "--group-mode", "shared",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "manifest.json").read_text())["engines_status"]["reason"] == "--onnx-only"


def test_shape_profiles_for_sd15_sizes():
    manifest = {
        "pipeline": {"resolution": [512, 512], "vae_scale_factor": 8, "max_length": 77},
        "shapes": {"static": False},
        "components": {
            "unet": {
                "inputs": [
                    {"name": "sample", "shape": ["batch", 4, "height", "width"]},
                    {"name": "timestep", "shape": []},
                    {"name": "encoder_hidden_states", "shape": ["batch", "sequence", 768]},
                ]
            },
            "vae_decoder": {"inputs": [{"name": "latent_sample", "shape": ["image_batch", 4, "height", "width"]}]},
        },
    }
    p = shape_profiles(manifest, TrtOptions())
    assert p["unet"]["sample"] == [[1, 4, 32, 32], [2, 4, 64, 64], [8, 4, 128, 128]]
    assert p["unet"]["encoder_hidden_states"][2] == [8, 77, 768] and "timestep" not in p["unet"]
    assert p["vae_decoder"]["latent_sample"] == [[1, 4, 32, 32], [1, 4, 64, 64], [4, 4, 128, 128]]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"batch": [2, 1, 4]}, "batch must be"),
        ({"resolution_scale": [0, 1, 2]}, "resolution_scale"),
        ({"float_precision": "int4"}, "float_precision"),
        ({"workspace": 3}, "unknown keys"),
    ],
)
def test_bad_tensorrt_section_is_a_user_error(bad, message):
    from edgeq.errors import EdgeqError

    with pytest.raises(EdgeqError, match=message):
        TrtOptions.from_profile(bad)


def test_per_group_mode_writes_one_graph_and_one_trtexec_command_per_group(tiny_models, sd15_cache, tmp_path):
    out = tmp_path / "pg"
    r = cli(
        "build", str(tiny_models["sd15"]), "--target", "tensorrt", "--onnx-only", "--group-mode", "per-group",
        "--groups", "2", "--num-calib", "3", "--num-heldout", "2", "--out", str(out), "--cache-dir", str(sd15_cache),
    )  # fmt: skip
    assert r.returncode in (0, 3), r.stderr[-2000:]  # random weights may fail a quality gate; the layout is the point
    m = json.loads((out / "manifest.json").read_text())
    graphs = m["components"]["unet"]["graphs"]
    assert [g["path"] for g in graphs] == ["unet/model.g0.onnx", "unet/model.g1.onnx"]
    assert m["components"]["unet"]["rule_violations"]["count"] == 0
    text = (out / "trtexec.sh").read_text()
    assert "--saveEngine=unet/model.g0.plan" in text and "--saveEngine=unet/model.g1.plan" in text


def test_engine_input_outside_its_profile_is_refused_before_running():
    from edgeq.errors import EdgeqError

    runner = object.__new__(TrtRunner)
    runner.profile_shapes = {"sample": [[1, 4, 32, 32], [2, 4, 64, 64], [8, 4, 128, 128]]}
    runner._check_range("sample", (2, 4, 64, 64))
    with pytest.raises(EdgeqError, match="sample axis 2 is 160; this engine was built for 32..128"):
        runner._check_range("sample", (2, 4, 160, 160))
