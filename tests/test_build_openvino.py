"""`edgeq build --target openvino`: IR lowering, OpenVINO at run time and in the checks, gates."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import cli, run_without_torch

from edgeq.errors import EdgeqError

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install 'edgeq[openvino]'")


@pytest.fixture(scope="module")
def ov_build(target_build):
    return target_build("openvino")


def test_tiny_sd_openvino_passes_its_gates(ov_build):
    out, r = ov_build
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["passed"] and rep["target"] == "openvino" and all(g["passed"] for g in rep["gates"])
    assert all(row["sqnr_db"] >= 20.0 for row in rep["unet_groups"]) and len(rep["unet_groups"]) == 4
    # auto checks the group-gains graph beside the shared and per-group ones (OpenVINO keeps its int8 kernels)
    assert set(rep["variants"]) == {"shared", "per-group", "gains"}
    worst = {k: min(x["sqnr_db"] for x in rows) for k, rows in rep["variants"].items()}
    assert worst["gains"] >= worst["per-group"] - 0.5
    plan = json.loads((out / "quant_plan.json").read_text())["unet"]
    assert len(plan["gains"]["table"]) == 4 and len(plan["gains"]["table"][0]) == 2 * len(plan["gains"]["tensors"])
    # gains only where some group's scale is gains_min_bits (0.1) from the shared one: g_in = s / s_g
    g, k = plan["gains"], len(plan["gains"]["tensors"])
    assert g["min_bits"] == 0.1 and 0 < k < g["candidates"] <= len(plan["activations"])
    spread = np.abs(np.log2(np.asarray(g["table"])[:, :k])).max(0)
    assert spread.min() >= 0.1 - 1e-6
    q = json.loads((out / "manifest.json").read_text())["quantization"]
    assert q["gains"] == {
        "tensors": k, "candidates": g["candidates"], "min_bits": 0.1, "fallback": False, "held_back": 0
    }  # fmt: skip
    assert f"gains {k} of {g['candidates']} activation tensors" in (out / "report.md").read_text()


def test_ir_and_explicit_precision_in_manifest(ov_build):
    out, _ = ov_build
    m = json.loads((out / "manifest.json").read_text())
    for comp in m["components"].values():
        assert comp["runtime"] == "openvino"
        paths = [g["path"] for g in comp["graphs"]] if "graphs" in comp else [comp["path"]]
        for p in paths:
            assert p.endswith(".xml") and (out / p).is_file() and (out / p).with_suffix(".bin").is_file()
        opts = comp["openvino"]
        # the profile's hint is auto: a measured choice, the same for every component, with its reason
        choice = opts["precision_choice"]
        assert opts["device"] == "CPU" and opts["inference_precision"] == choice["chosen"] in ("f32", "bf16")
        assert choice["requested"] == "auto" and choice["reason"]
        if not {"avx512_bf16", "amx_bf16"} & set(m["cpu"]["built_on"]["flags"]):
            assert choice["chosen"] == "f32" and "has no bf16" in choice["reason"] and not choice["measured"]
        else:
            assert [x["hint"] for x in choice["measured"]] == ["f32", "bf16"]
    layers = m["components"]["unet"]["openvino"]["compute_layers_by_precision"]
    int8 = {k.split(":")[0]: v for k, v in layers.items() if k.endswith((":u8", ":i8"))}
    if m["cpu"]["family"] == "x86-novnni":
        # without VNNI the linear layers stay float (slower in int8 there), with the reason per node
        assert "FullyConnected" not in int8 and int8["Convolution"] > layers.get("Convolution:f32", 0)
        plan = json.loads((out / "quant_plan.json").read_text())["unet"]
        assert not [n for n in plan["quantized_nodes"] if n.endswith("MatMul")]
        weight_matmuls = [d for d in plan["excluded_nodes"] if d["reason"].startswith("x86-novnni: ")]
        assert weight_matmuls and all(d["op_type"] in ("MatMul", "Gemm") for d in weight_matmuls)
    else:  # most compute layers really run int8
        assert sum(int8.values()) > sum(v for k, v in layers.items() if k.endswith(":f32"))
    assert not list(out.rglob("*.onnx_data")) and not (out / ".onnx").exists()


def test_edgeq_run_uses_openvino(ov_build, tmp_path):
    out, _ = ov_build
    png = tmp_path / "ov.png"
    r = run_without_torch(
        out, png, "a small blue square at the top right on a white background", also_loaded=("openvino",)
    )
    assert r.returncode == 0, r.stderr
    assert png.stat().st_size > 0


def test_per_group_mode_writes_one_ir_per_group(tiny_models, sd15_cache, tmp_path):
    out = tmp_path / "pg"
    r = cli(
        "build",
        str(tiny_models["sd15"]),
        "--target",
        "openvino",
        "--group-mode",
        "per-group",
        "--groups",
        "2",
        "--num-calib",
        "3",
        "--num-heldout",
        "2",
        "--out",
        str(out),
        "--cache-dir",
        str(sd15_cache),
    )
    assert r.returncode in (0, 3), r.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    graphs = m["components"]["unet"]["graphs"]
    assert [g["path"] for g in graphs] == ["unet/model.g0.xml", "unet/model.g1.xml"]
    assert all((out / g["path"]).with_suffix(".bin").is_file() for g in graphs)


def test_missing_runtime_names_the_install_command(monkeypatch):
    import importlib.util

    from edgeq.targets import get_target

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(EdgeqError, match="needs openvino") as e:
        get_target("openvino")
    assert "pip install 'edgeq[openvino]'" in str(e.value)


def test_gains_mode_is_one_ir_with_a_gains_input(tiny_models, sd15_cache, tmp_path):
    """--group-mode gains: one IR and one weights file for every group; the pipeline feeds the row of
    the call's group (edgeq run, without torch) and the checks measure it."""
    from conftest import run_without_torch

    out = tmp_path / "gains"
    r = cli(
        "build", str(tiny_models["sd15"]), "--target", "openvino", "--group-mode", "gains", "--groups", "2",
        "--num-calib", "3", "--num-heldout", "2", "--out", str(out), "--cache-dir", str(sd15_cache),
    )  # fmt: skip
    assert r.returncode in (0, 3), r.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    unet = m["components"]["unet"]
    assert unet["path"] == "unet/model.xml" and unet["gains"] == "unet/gains.json" and "graphs" not in unet
    assert sorted(p.name for p in (out / "unet").iterdir()) == ["config.json", "gains.json", "model.bin", "model.xml"]
    gains = json.loads((out / "unet" / "gains.json").read_text())
    assert gains["input"] == "edgeq_gains" and len(gains["table"]) == 2 and len(gains["groups"]) == 2
    assert m["quantization"]["group_mode"] == "gains" and "gains" in m["quantization"]["variants"]
    assert m["genai"]["ready"] is False and "gains input" in m["genai"]["reason"]  # GenAI cannot feed it
    res = run_without_torch(out, tmp_path / "img.png", "a red circle", also_loaded=("openvino",))
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "img.png").stat().st_size > 0


def test_precision_hint_measured_on_the_build(ov_build):
    """Both hints really measured on the build's UNet (on a CPU without bf16 OpenVINO runs the bf16 hint
    as f32, which the measurement shows and the decision reads), and the decision rule on numbers."""
    from edgeq.calibrate.capture import Sample
    from edgeq.targets.openvino.precision import HintMeasure, decide, measure

    out, _ = ov_build
    m = json.loads((out / "manifest.json").read_text())
    unet = m["components"]["unet"]
    path = out / (unet["graphs"][0]["path"] if "graphs" in unet else unet["path"])
    z = np.load(out / "verify" / "unet_calls.npz")
    samples = [
        Sample(0, i, 0.0, {f.split(".in.")[1]: z[f] for f in z.files if f.startswith(f"c{i}.in.")}, z[f"c{i}.fp32"])
        for i in range(3)
    ]
    f32 = measure(path, samples, "f32", "CPU", "LATENCY")
    bf16 = measure(path, samples, "bf16", "CPU", "LATENCY")
    assert (
        min(f32.sqnr_db) > 20
        and len(f32.sqnr_db) == 3
        and f32.median_s > 0
        and not any(k.endswith(":bf16") for k in f32.layers)
    )
    chosen, reason = decide(f32, bf16)
    if not {"avx512_bf16", "amx_bf16"} & set(m["cpu"]["built_on"]["flags"]):
        assert not any(k.endswith(":bf16") for k in bf16.layers)
        assert chosen == "f32" and "ran no layer in bf16" in reason

    def hm(hint, s, db, bf16_layers=10):
        return HintMeasure(hint, s, db, {"Convolution:u8": 5, f"FullyConnected:{hint}": bf16_layers})

    f = hm("f32", 1.0, (30.0, 40.0))
    assert decide(f, hm("bf16", 0.5, (29.9, 39.6)))[0] == "bf16"
    assert "not 1.1x faster" in decide(f, hm("bf16", 0.95, (30.0, 40.0)))[1]
    assert "ran no layer in bf16" in decide(f, hm("bf16", 0.5, (30.0, 40.0), bf16_layers=0))[1]
    # the worst call barely moves, but the best one loses 2 dB: the kernel gate would see it, so f32
    assert "a call loses 2.00 dB" in decide(f, hm("bf16", 0.5, (30.0, 38.0)))[1]


def test_bench_float_baseline_with_a_precision_hint(ov_build, target_build, tmp_path):
    """edgeq bench --float-precision: the FP32 baseline of an openvino build with that OpenVINO hint
    (recorded and printed); refused before any work for a runtime without hints, and for an unknown hint."""
    out, _ = ov_build
    dest = tmp_path / "bench.json"
    r = cli("bench", str(out), "--repeats", "2", "--warmup", "1", "--no-pipeline", "--float-precision", "bf16",
            "--out", str(dest))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(dest.read_text())
    assert res["settings"]["float_precision"] == "bf16" and "bf16 precision hint" in r.stdout
    assert all(row["speedup"] > 0 for row in res["components"].values())
    r = cli("bench", str(out), "--float-precision", "f64")
    assert r.returncode == 2 and "is not one of f32, bf16, f16" in r.stderr
    r = cli("bench", str(target_build("ort-cpu")[0]), "--float-precision", "bf16")
    assert r.returncode == 2 and "whose runtime has no precision hint" in r.stderr and "Traceback" not in r.stderr


def test_compiled_model_cache_is_bounded(tiny_exports, tmp_path, monkeypatch):
    """OpenVINO never deletes a compiled blob; edgeq keeps its cache under EDGEQ_OPENVINO_CACHE_GB,
    least recently used first, and never what it just compiled."""
    import os

    from edgeq.targets.openvino import OpenVinoRunner, compiled_cache_dir

    monkeypatch.setenv("EDGEQ_CACHE", str(tmp_path))
    folder = compiled_cache_dir()
    folder.mkdir(parents=True)
    old = []
    for i in range(3):  # three stale blobs of 1 MB, the oldest first
        f = folder / f"stale{i}.blob"
        f.write_bytes(b"\0" * 2**20)
        os.utime(f, (1_000_000 + i, 1_000_000 + i))
        old.append(f)
    monkeypatch.setenv("EDGEQ_OPENVINO_CACHE_GB", str(2.5 * 2**20 / 2**30))  # room for 2.5 MB
    r = OpenVinoRunner(tiny_exports["sd15"] / "vae_decoder" / "model.onnx")
    new = [f for f in folder.iterdir() if f not in old]
    assert new, "OpenVINO wrote no blob"
    assert all(f.exists() for f in new)  # what was just compiled stays
    total = sum(f.stat().st_size for f in folder.iterdir())
    assert not old[0].exists()  # the least recently used went first
    assert total <= 2.5 * 2**20 or [f for f in folder.iterdir() if f in old] == [], total
    assert r.run({"latent_sample": np.zeros((1, 4, 8, 8), np.float32)})  # and the model runs
