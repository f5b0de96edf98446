"""TensorRT engines on an NVIDIA GPU: skipped, with the reason printed, where there is none."""

from __future__ import annotations

import json

import pytest
from conftest import cli

from edgeq.targets.tensorrt.engines import build_engine, timing_cache_path, unavailable_reason
from edgeq.targets.tensorrt.options import TrtOptions
from edgeq.targets.tensorrt.packaging import shape_profiles
from edgeq.targets.tensorrt.runner import TrtRunner

REASON = unavailable_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=f"no TensorRT engines here: {REASON}")]


@pytest.fixture(scope="module")
def engine_build(tmp_path_factory, tiny_sd_cache):
    out = tmp_path_factory.mktemp("trtgpu") / "out"
    r = cli("build", "tiny-sd", "--target", "tensorrt", "--out", str(out), "--cache-dir", str(tiny_sd_cache))
    return out, r


def test_engines_are_built_and_pass_the_gates_on_the_gpu(engine_build):
    out, r = engine_build
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["engines_status"]["built"] is True
    for name, comp in m["components"].items():
        assert comp["runtime"] == "tensorrt", name
        plans = [g["engine"] for g in comp["graphs"]] if "graphs" in comp else [comp["engine"]]
        assert all((out / p).is_file() and p in m["artifacts"] for p in plans)
        assert comp["tensorrt"]["version"] and comp["tensorrt"]["compute_capability"]
    rep = json.loads((out / "report.json").read_text())
    assert rep["passed"] and "TensorRT engines on" in rep["engines"]["checks"]
    assert (out / "report_cpu_simulation.json").is_file() and (out / "timing.cache").is_file()


def test_run_uses_the_engines(engine_build, tmp_path):
    out, _ = engine_build
    r = cli(
        "run",
        str(out),
        "--prompt",
        "a small green triangle at the top left on a white background",
        "-o",
        str(tmp_path / "x.png"),
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "x.png").stat().st_size > 0


def test_engine_from_another_tensorrt_version_is_refused(engine_build):
    from edgeq.errors import EdgeqError

    out, _ = engine_build
    m = json.loads((out / "manifest.json").read_text())
    info = {**m["components"]["unet"]["tensorrt"], "version": "0.0.1"}
    plan = out / (m["components"]["unet"].get("engine") or m["components"]["unet"]["graphs"][0]["engine"])
    with pytest.raises(EdgeqError, match="built with TensorRT 0.0.1"):
        TrtRunner(plan, info)


def test_corrupt_timing_cache_warns_and_builds(engine_build, tmp_path, monkeypatch):
    out, _ = engine_build
    monkeypatch.setenv("EDGEQ_CACHE", str(tmp_path))
    cache = timing_cache_path()
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(b"not a timing cache")
    m = json.loads((out / "manifest.json").read_text())
    shapes = shape_profiles(m, TrtOptions())["vae_decoder"]
    res = build_engine(out / "vae_decoder" / "model.onnx", tmp_path / "v.plan", shapes, TrtOptions(), cache)
    assert "unreadable" in res["timing_cache_note"] and (tmp_path / "v.plan").stat().st_size > 0
