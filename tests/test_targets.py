"""The target contract, for every shipped target's shared tiny-sd build, and a target registered
from a folder and a TOML under tests/ (no edit of edgeq/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TARGET_BUILDS, cli, run_without_torch

from edgeq.manifest import read_manifest
from edgeq.runtime.integrity import verify
from edgeq.stages.config import BuildPlan
from edgeq.stages.plan import QuantPlan
from edgeq.targets.base import ENGINES_NOT_BUILT

HERE = Path(__file__).parent


@pytest.mark.parametrize("target", list(TARGET_BUILDS))
def test_target_build_contract(target_build, target):
    """Every target: the build passes (TensorRT: engines not built here), the quant plan is exactly the
    stage object's serialisation, the manifest's plan round-trips, every artifact matches its hash."""
    if target == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install 'edgeq[openvino]'")
    out, r = target_build(target)
    assert r.returncode in (0, ENGINES_NOT_BUILT), r.stdout[-2000:] + r.stderr[-2000:]
    m = read_manifest(out)
    assert m["target"] == target and m["status"] == "passed"
    raw = json.loads((out / "quant_plan.json").read_text())
    assert QuantPlan.from_dict(raw).to_dict() == raw
    assert raw["target"] == target and raw["group_mode"] == m["quantization"]["group_mode"]
    plan = BuildPlan.from_dict(m["build_plan"])
    assert plan.target == target and plan.to_dict() == m["build_plan"] and Path(plan.out) == out
    verify(out, m, trust_stamp=False)  # every file's sha256
    rep = json.loads((out / "report.json").read_text())
    assert rep["passed"] and all(g["passed"] for g in rep["gates"])


def test_target_from_a_folder_and_a_toml(tmp_path, tiny_sd_cache):
    """tests/plugin_target.toml names tests/plugin_target/ (a Target subclass): it builds, checks and runs.
    Its calibration and Q/DQ graphs are ort-cpu's (same profile, same cache): only the checks run anew."""
    out = tmp_path / "out"
    r = cli(
        "build", "tiny-sd", "--target", str(HERE / "plugin_target.toml"), "--num-heldout", "2",
        "--group-mode", "shared", "--out", str(out), "--cache-dir", str(tiny_sd_cache),
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    m = read_manifest(out)
    assert m["target"] == "ort-exact" and m["components"]["unet"]["runtime"] == "onnxruntime-exact"
    assert m["quantization"]["profile"]["plugin"] == str((HERE / "plugin_target").resolve())
    # the policy comes from the extended ort-cpu profile
    plan = json.loads((out / "quant_plan.json").read_text())
    assert plan["unet"]["policy"]["activation_type"] == "uint8" and plan["unet"]["excluded_nodes"]
    res = run_without_torch(out, tmp_path / "img.png", "a red circle")
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "img.png").stat().st_size > 0


def test_unknown_target_in_a_profile_is_named(tmp_path):
    prof = tmp_path / "p.toml"
    prof.write_text('name = "x"\nextends = "ort-cpu"\ntarget = "no-such-backend"\n')
    r = cli("build", "tiny-sd", "--target", str(prof), "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 2 and "no-such-backend" in r.stderr and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert not (tmp_path / "c").exists()
