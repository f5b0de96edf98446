"""`edgeq sensitivity` and a build with mixed precision and shortcut splitting, on trained tiny-sd."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_sd_cache):
    root = tmp_path_factory.mktemp("mp")
    (root / "cache").symlink_to(tiny_sd_cache, target_is_directory=True)
    return root


def test_sensitivity_ranks_nodes_and_searches_to_a_goal(cache):
    out = cache / "sens"
    r = cli(
        "sensitivity", "tiny-sd", "--target", "ort-cpu", "--calls", "4", "--goal-sqnr", "32.6",
        "--out", str(out), "--cache-dir", str(cache / "cache"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "sensitivity.json").read_text())
    gains = [n["float_gain_db"] for n in res["nodes"]]
    assert gains == sorted(gains, reverse=True) and len(gains) > 100
    weight = [n for n in res["nodes"] if not n["activation_matmul"]]
    assert abs(sum(n["mac_share"] for n in weight) + res["float_macs"]["float_share"] - 1.0) < 1e-6
    assert all(len(n["alone_db"]) == len(res["groups"]) for n in res["nodes"])
    mp = res["mixed_precision"]
    assert mp["curve"][0]["float_share"] == pytest.approx(res["float_macs"]["float_share"])
    assert mp["met"] == (mp["curve"][-1]["worst_db"] >= 32.6)
    assert [c["worst_db"] for c in mp["curve"]][-1] >= mp["curve"][0]["worst_db"]
    for f in ("sensitivity.md", "sensitivity.png", "tradeoff.png"):
        assert (out / f).stat().st_size > 0
    assert "| 1 | " in (out / "sensitivity.md").read_text()
    assert "float gain dB" in r.stdout


def test_sensitivity_bad_calls(cache):
    r = cli("sensitivity", "tiny-sd", "--calls", "0", "--cache-dir", str(cache / "cache"))
    assert r.returncode == 2 and "--calls must be at least 1" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow  # about 6 minutes: SmoothQuant, per-class ranges and the search, each measured in the build
def test_build_with_goal_and_shortcut_splitting(cache):
    """Profile with SmoothQuant, shortcut splitting, per-class range methods and a goal: the choices are
    measured, recorded and explained (split Convs and float nodes say why); the report shows the float share and trade-off."""
    text = (ROOT / "targets" / "ort-cpu.toml").read_text()
    # the base without the CPU profiles' up-block shortcut exclusion: those Convs read the concat to split
    text = text.replace('extends = "_cpu"', 'extends = "_common"', 1)
    text = text.replace(
        'activation_matmul = "float"   #',
        'split_concat_convs = true\ngoal_sqnr_db = 32.0\nsmoothquant = true\nsmoothquant_alphas = [0.5]\nactivation_matmul = "float"   #',
        1,
    ).replace('range_method = "mse"', 'range_method = "auto"', 1)
    prof = cache / "ort-cpu-mp.toml"
    prof.write_text(text)
    out = cache / "build"
    r = cli(
        "build", "tiny-sd", "--target", str(prof), "--out", str(out), "--cache-dir", str(cache / "cache"),
        "--num-heldout", "16",
    )  # fmt: skip
    assert r.returncode in (0, 3), r.stderr[-3000:]
    summary = (out / "quant_summary.txt").read_text()
    assert "split per input" in summary and "/split0\t" in summary
    plan = json.loads((out / "quant_plan.json").read_text())["unet"]
    assert plan["splits"] and all(s["ratio"] >= 2.0 for s in plan["splits"])
    sq = plan["smoothquant"]
    assert sq["sites"] > 0 and [c["alpha"] for c in sq["candidates"]] == [
        None,
        0.5,
    ]  # the alphas named (one, to keep the suite short) and off
    assert sq["alpha"] == max(sq["candidates"], key=lambda c: c["worst_db"])["alpha"]
    rc = plan["range_choice"]  # per tensor class, the measured best of min-max, percentile and MSE clipping
    assert rc["default"] == "mse" and set(rc["winners"].values()) <= {"minmax", "percentile", "mse"}
    assert "Conv input from SiLU" in rc["winners"] and "MatMul input from LayerNormalization" in rc["winners"]
    for c, w in rc["winners"].items():
        assert rc["measured_worst_db"][c][w] == max(rc["measured_worst_db"][c].values())
    assert rc["final_worst_db"] >= rc["baseline_worst_db"]
    assert "Range method per tensor class" in (out / "report.md").read_text()
    mp = plan["mixed_precision"]
    floated = {f["node"] for f in mp["float_nodes"]}
    for line in summary.splitlines():
        node, _, prec, reason = line.split("\t")
        if node in floated:
            assert prec == "float" and reason.startswith("sensitivity:")
    assert plan["float_macs"]["float_share"] <= 0.10 + 1e-9
    report = (out / "report.md").read_text()
    assert "## Precision of the UNet" in report and "weight-layer MACs left float" in report
    assert (out / "tradeoff.png").stat().st_size > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"]["precision"]["mixed_precision"]["goal_db"] == 32.0
