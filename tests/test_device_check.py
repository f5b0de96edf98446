"""Accuracy that holds on the device: kernel fidelity in every CPU build, `edgeq check` without torch,
the run-time family warning, and sha256 integrity, on the shared tiny-sd builds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMALL, cli, run_without_torch

from edgeq.runtime.cpu import can_emulate, detect, emulation_env

CPU = detect()
FAMILY_NOTE = f"this machine: {CPU.describe()}"


def _report(build: Path) -> dict:
    return json.loads((build / "report.json").read_text())


@pytest.mark.parametrize("target", ["ort-cpu", "openvino"])
def test_kernel_fidelity_is_measured_and_gated(target_build, target):
    out, r = target_build(target)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = _report(out)
    assert rep["cpu"]["family"] == CPU.family and rep["cpu"]["built_on"]["flags"] == list(CPU.flags)
    host = rep["kernel_fidelity"]["host"]
    groups = host["groups"]
    assert len(groups) == len(rep["unet_groups"]) and all(g["calls"] >= 1 for g in groups)
    for g in groups:  # quantization error and kernel error, apart
        assert g["exact_db"] > 20 and g["deployed_db"] > 20
        assert g["gap_db"] == pytest.approx(max(g["exact_db"] - g["deployed_db"], 0.0))
    gates = [x for x in rep["gates"] if x["metric"].startswith("kernel_gap_db")]
    assert len(gates) >= len(groups) and all(x["threshold"] == 1.0 for x in gates)
    assert "## Kernel fidelity" in (out / "report.md").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"verify/bundle.json", "verify/unet_calls.npz", "verify/images.npz"} <= set(manifest["artifacts"])


def test_saturating_flavour_is_caught_where_it_saturates(target_build, tmp_path, tiny_sd_cache):
    """8-bit weights on a family whose u8 x s8 kernels saturate fail the kernel gate; 7-bit weights pass."""
    if CPU.family == "x86-vnni" and can_emulate("x86-novnni", "openvino"):
        # this machine computes exactly; OpenVINO capped below VNNI computes as x86 without VNNI
        out, r = target_build("openvino")
        assert r.returncode == 0, r.stderr[-3000:]
        fid = _report(out)["kernel_fidelity"]
        assert max(g["gap_db"] for g in fid["host"]["groups"]) <= 1.0, FAMILY_NOTE
        emu = fid["emulated"]["x86-novnni"]
        assert emu["emulated"] and max(g["gap_db"] for g in emu["groups"]) > 3.0, FAMILY_NOTE
        assert any("VPMADDUBSW" in n for n in emu["notes"])
        # built for the host family: the emulated family is reported, not gated
        assert not any("x86-novnni" in g["metric"] for g in _report(out)["gates"])
        portable = tmp_path / "portable"
        r = cli(
            "build", "tiny-sd", "--target", "openvino", "--cpu", "portable", *SMALL, "--group-mode", "shared",
            "--out", str(portable),
            "--cache-dir", str(tiny_sd_cache),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        rep = _report(portable)
        assert rep["cpu"]["weight_bits"] == 7
        emu = rep["kernel_fidelity"]["emulated"]["x86-novnni"]
        assert max(g["gap_db"] for g in emu["groups"]) <= 1.0, FAMILY_NOTE
        assert any("x86-novnni, emulated" in g["metric"] and g["passed"] for g in rep["gates"])
    elif CPU.family == "x86-novnni":
        # this machine saturates: a build forced to 8-bit weights (made for VNNI) fails its kernel gate
        bad = tmp_path / "vnni-on-novnni"
        r = cli(
            "build", "tiny-sd", "--target", "ort-cpu", "--cpu", "x86-vnni", *SMALL, "--out", str(bad),
            "--cache-dir", str(tiny_sd_cache),
        )  # fmt: skip
        assert r.returncode == 3, FAMILY_NOTE + r.stderr[-2000:]
        assert "kernel_gap_db[x86-novnni]" in r.stderr
        out, r = target_build("ort-cpu")  # built for this machine: 7-bit weights, exact
        assert r.returncode == 0 and _report(out)["cpu"]["weight_bits"] == 7, FAMILY_NOTE
    else:
        pytest.skip(f"no saturating int8 family to run or emulate here ({FAMILY_NOTE})")
    print(f"ran on {FAMILY_NOTE}")


def test_edgeq_check_on_a_copied_build_without_torch(target_build, tmp_path):
    out, r = target_build("ort-cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    copy = tmp_path / "device" / "build"
    shutil.copytree(out, copy)
    code = (
        "import sys; from edgeq.cli.main import main; rc = main(['check', sys.argv[1]]); "
        "sys.exit(rc or (5 if 'torch' in sys.modules or 'diffusers' in sys.modules else 0))"
    )
    p = subprocess.run([sys.executable, "-c", code, str(copy)], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    assert "PASSED on " in p.stdout and "files match their sha256" in p.stdout
    dev = json.loads((copy / "device_report.json").read_text())
    assert dev["passed"] and dev["family"] == CPU.family and dev["e2e"]["images"] >= 1
    assert dev["e2e"]["psnr_vs_build_host_db"] > 30  # same machine: the host's own INT8 images
    host = _report(out)["kernel_fidelity"]["host"]
    # the build's own check reused the images it had just made for the bundle; made again here, they
    # give the same figures
    assert dev["e2e"]["psnr_db"] == pytest.approx(host["e2e"]["psnr_db"], rel=1e-9)
    assert dev["e2e"]["ssim"] == pytest.approx(host["e2e"]["ssim"], rel=1e-9)
    assert [g["gap_db"] for g in dev["groups"]] == pytest.approx([g["gap_db"] for g in host["groups"]], abs=1e-6)
    assert "| group | calls | exact Q/DQ vs FP32 dB" in (copy / "device_report.md").read_text()


def test_emulated_family_through_edgeq_check(target_build, tmp_path):
    """`edgeq check` under a capped instruction set reports the other family and names the fix."""
    if not can_emulate("x86-novnni", "openvino"):
        pytest.skip(f"this machine cannot emulate x86 without VNNI ({FAMILY_NOTE})")
    out, _ = target_build("openvino")
    env = {**__import__("os").environ, **emulation_env("x86-novnni")}
    p = subprocess.run(
        [sys.executable, "-m", "edgeq", "check", str(out), "--calls-only", "--report", str(tmp_path)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert p.returncode == 3, p.stdout + p.stderr
    assert "FAILED on x86-novnni" in p.stdout and "--cpu portable" in p.stdout
    assert "gate failed: unet group 0 kernel_gap_db" in p.stderr and "Traceback" not in p.stderr
    png = tmp_path / "x.png"
    r = subprocess.run(
        [sys.executable, "-m", "edgeq", "run", str(out), "--prompt", "a red circle", "-o", str(png)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert r.returncode == 0 and r.stderr.count("warning: this build was made for the x86-vnni") == 1, r.stderr


def test_run_warns_once_when_the_family_differs(target_build, tmp_path):
    out, _ = target_build("ort-cpu")
    for recorded, warned in (("arm-dotprod", True), ("portable", False), (CPU.family, False)):
        copy = tmp_path / recorded
        shutil.copytree(out, copy)
        m = json.loads((copy / "manifest.json").read_text())
        m["cpu"]["family"] = recorded
        (copy / "manifest.json").write_text(json.dumps(m))
        r = run_without_torch(copy, tmp_path / f"{recorded}.png", "a red circle")
        assert r.returncode == 0, r.stderr[-2000:]
        n = r.stderr.count(f"warning: this build was made for the {recorded} int8 kernel family")
        assert n == (1 if warned else 0), r.stderr
        if warned:
            assert f"this CPU is {CPU.family}" in r.stderr and "--cpu portable" in r.stderr


def test_a_changed_byte_is_refused(target_build, tmp_path):
    out, _ = target_build("ort-cpu")
    copy = tmp_path / "b"
    shutil.copytree(out, copy)
    png = tmp_path / "ok.png"
    assert run_without_torch(copy, png, "a red circle").returncode == 0  # verified once, then stamped
    graph = copy / json.loads((copy / "manifest.json").read_text())["components"]["unet"]["path"]
    data = copy / "unet" / "model.onnx_data"
    victim = data if data.is_file() else graph
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # same size, one bit
    victim.write_bytes(bytes(raw))
    for cmd in (["run", str(copy), "--prompt", "a red circle", "-o", str(tmp_path / "bad.png")], ["check", str(copy)]):
        r = cli(*cmd)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"{victim} does not match its sha256" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad.png").exists()
