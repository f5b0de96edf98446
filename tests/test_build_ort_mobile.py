"""`edgeq build --target ort-mobile` (and ort-mobile-qnn): .ort files, the reduced-build operator
config, ONNX Runtime's mobile usability verdicts, accuracy gates on the .ort files, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from conftest import run_without_torch
from onnx import TensorProto, helper

from edgeq.errors import EdgeqError
from edgeq.targets import ort_mobile

EPS = {"NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram"}


@pytest.fixture(scope="module")
def mobile_build(target_build):
    return target_build("ort-mobile")


def test_tiny_sd_ort_mobile_passes_its_gates(mobile_build):
    out, r = mobile_build
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["passed"] and rep["target"] == "ort-mobile" and all(g["passed"] for g in rep["gates"])
    assert {g["component"] for g in rep["gates"]} == {"unet", "vae_decoder", "pipeline"}
    assert len(rep["unet_groups"]) == 4 and all(row["sqnr_db"] >= 20.0 for row in rep["unet_groups"])
    assert rep["group_mode"] == "per-group" and set(rep["variants"]) == {"shared", "per-group"}


def test_ort_files_and_operator_config(mobile_build):
    out, _ = mobile_build
    m = json.loads((out / "manifest.json").read_text())
    assert m["shapes"]["static"] and m["shapes"]["axes"]["batch"] == 2
    unet = m["components"]["unet"]
    assert [g["path"] for g in unet["graphs"]] == [f"unet/model.g{i}.ort" for i in range(4)]
    paths = [g["path"] for c in m["components"].values() for g in c.get("graphs", [c])]
    assert {"text_encoder/model.ort", "vae_decoder/model.ort"} <= set(paths)
    for p in [*paths, "required_operators.config"]:
        assert (out / p).is_file() and len(m["artifacts"][p]["sha256"]) == 64, p
    # the deployable holds no ONNX graph but the tokenizer's, and no external weights
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.onnx*")) == ["tokenizer/tokenizer.onnx"]
    assert not (out / ".onnx").exists()
    for c in m["components"].values():
        assert c["runtime"] == "onnxruntime-ort" and c["ort_format"]["operator_config"] == "required_operators.config"
    config = (out / "required_operators.config").read_text()
    assert "ai.onnx;10;QLinearConv,QLinearMatMul" in config  # Q/DQ units fused into ops XNNPACK takes
    assert "/tmp" not in config and "unet/model.g3.ort" in config
    flavours = unet["ort_format"]["qdq_flavours"]
    assert flavours["Conv: int8 x int8 per-channel (zp 0)"] > flavours.get("Conv: float", 0)  # XNNPACK qs8_qc8w
    assert unet["precision"] == "int8 weights, int8 activations (W8A8 Q/DQ)"


def test_usability_verdicts_in_manifest_and_report(mobile_build):
    out, _ = mobile_build
    m = json.loads((out / "manifest.json").read_text())
    rep = json.loads((out / "report.json").read_text())
    for name in ("text_encoder", "unet", "vae_decoder"):
        u = m["components"][name]["usability"]
        assert set(u["verdicts"]) == EPS
        for v in u["verdicts"].values():
            assert v["verdict"] in ("YES", "MAYBE", "NO") and v["reasons"]
            assert any("nodes can be handled by the" in x for x in v["reasons"])
        assert rep["usability"][name] == u
    md = (out / "report.md").read_text()
    assert "## Execution-provider usability" in md and "| unet | NO | NO | NO |" in md
    assert "Execution-provider usability" in (out / "report.html").read_text()


def test_edgeq_run_on_ort_build(mobile_build, tmp_path):
    out, _ = mobile_build
    png = tmp_path / "m.png"
    r = run_without_torch(out, png, "a large red circle in the center on a blue background")
    assert r.returncode == 0, r.stderr
    assert png.stat().st_size > 0


def test_qnn_profile_w8a16(target_build):
    """W8A16 for the QNN EP: uint16 activations (ORT's com.microsoft Q/DQ), checked on the .ort files."""
    out, r = target_build("ort-mobile-qnn")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    unet = m["components"]["unet"]
    assert unet["path"] == "unet/model.ort" and unet["precision"].startswith("int8 weights, uint16 activations")
    assert unet["ort_format"]["execution_providers"] == ["QNN", "CPU"]
    flavours = unet["ort_format"]["qdq_flavours"]
    assert flavours["Conv: uint16 x int8 per-channel (zp 0)"] > 0
    assert flavours["MatMul: uint16 x int8 per-tensor (zp 0)"] > 0  # per_channel_op_types = ["Conv"]
    assert "com.microsoft;1;DequantizeLinear,QuantizeLinear" in (out / "required_operators.config").read_text()
    plan = json.loads((out / "quant_plan.json").read_text())
    zps = [a["shared"]["zero_point"] for a in plan["unet"]["activations"].values()]
    assert max(zps) > 255  # a 16-bit grid
    assert m["status"] == "passed"


# -- unit level: bad input -------------------------------------------------------------------------
def test_graph_over_2gb_is_refused(tmp_path):
    """A graph whose weights would not fit one flatbuffer is refused with the reason and the way out."""
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[750_000_000])  # 3 GB, never written
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "model.onnx_data"), ("offset", "0"), ("length", str(3_000_000_000))):
        w.external_data.add(key=k, value=v)
    node = helper.make_node("Identity", ["w"], ["y"])
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(EdgeqError, match="cannot exceed 2 GB") as e:
        ort_mobile.check_ort_size(path, "unet")
    assert "2.79 GiB" in str(e.value) and "ort-cpu" in str(e.value)


def test_missing_converter_names_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flatbuffers" else real(name, *a))
    with pytest.raises(EdgeqError, match="flatbuffers is not installed") as e:
        ort_mobile.convert(Path("unused"), Path("unused"), ort_mobile.MobileOptions())
    assert "pip install --upgrade onnxruntime flatbuffers" in str(e.value)


def test_missing_onnxruntime_names_the_install_command(monkeypatch):
    import importlib.util

    from edgeq.targets import get_target

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    for target in ("ort-mobile", "ort-mobile-qnn"):
        with pytest.raises(EdgeqError, match="needs onnxruntime") as e:
            get_target(target)
        assert "pip install onnxruntime" in str(e.value)


def test_bad_conversion_option_is_named(tmp_path):
    from edgeq.profiles import load_profile

    text = (Path(__file__).resolve().parents[1] / "targets" / "ort-mobile.toml").read_text()
    prof = tmp_path / "ort-mobile.toml"
    prof.write_text(text.replace('optimization_level = "extended"', 'optimization_level = "fast"'))
    with pytest.raises(EdgeqError, match=r'\[onnxruntime\] optimization_level = "fast"') as e:
        load_profile(str(prof))
    assert "one of basic, extended, all" in str(e.value.hint)
    prof.write_text(text.replace("[onnxruntime]", "[onnxruntime]\nthreads = 4"))
    with pytest.raises(EdgeqError, match=r"\[onnxruntime\] threads: unknown key"):
        load_profile(str(prof))


def test_usability_log_parsed_per_ep():
    """The checker's log (its wording in ORT 1.32), dynamic-shape second verdict included."""
    log = [
        "Checking model.onnx for usability with ORT Mobile.",
        "Checking NNAPI",
        "2 partitions with a total of 90/100 nodes can be handled by the NNAPI EP.",
        "\tPartition sizes: [60, 30]",
        "Unsupported nodes due to operator=10",
        "\tCaveats that have not been checked and may result in a node not actually being supported:  ",
        "     ai.onnx:Conv:Only 2D Conv is supported.",
        "Model should perform well with NNAPI as is: NO",
        "--------",
        "Checking if model will perform better if the dynamic shapes are fixed...",
        "Model should perform well with NNAPI if modified to have fixed input shapes: MAYBE",
        "================",
        "",
        "Checking CoreML MLProgram",
        "1 partitions with a total of 100/100 nodes can be handled by the CoreML MLProgram EP.",
        "Model should perform well with CoreML MLProgram as is: YES",
    ]
    v = ort_mobile.parse_usability(log)
    assert v["NNAPI"]["verdict"] == "MAYBE" and v["CoreML MLProgram"]["verdict"] == "YES"
    assert v["NNAPI"]["partition_sizes"] == [60, 30]
    assert v["NNAPI"]["caveats"] == ["ai.onnx:Conv:Only 2D Conv is supported."]
    assert "Unsupported nodes due to operator=10" in v["NNAPI"]["reasons"]
