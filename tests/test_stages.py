"""Stage-border objects and the cache protocol, with tiny inputs (no model)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import cli

from edgeq.errors import EdgeqError
from edgeq.stages.cache import StageCache
from edgeq.stages.config import BuildOptions, BuildPlan, resolve
from edgeq.stages.plan import ComponentPlan, QuantPlan, UnetPlan


@dataclass(frozen=True)
class Inp:
    a: int
    b: tuple[str, ...]


def test_cache_key_follows_every_input(tmp_path):
    c = StageCache(tmp_path, log=lambda *_: None)
    k = c.key("stats", Inp(1, ("x",)), Path("/a"), {"s": 1})
    assert k == c.key("stats", Inp(1, ("x",)), Path("/a"), {"s": 1})
    assert len({k, c.key("stats", Inp(2, ("x",)), Path("/a"), {"s": 1}), c.key("quant", Inp(1, ("x",)), Path("/a"), {"s": 1}),
                c.key("stats", Inp(1, ("x",)), Path("/b"), {"s": 1})}) == 4  # fmt: skip


def test_a_stage_version_bump_changes_the_keys_of_its_kind(tmp_path, monkeypatch):
    """``ranges-unet`` and ``gains-unet`` take their kind's version (``ranges``, ``gains``): bumping
    it invalidates every component's folder of that kind, and nothing else."""
    from edgeq.stages import cache

    c = StageCache(tmp_path)
    assert cache.stage_version("ranges-unet") == cache.VERSIONS["ranges"]
    assert cache.stage_version("trt-sim") == cache.VERSIONS["trt-sim"]
    assert cache.stage_version("capture-calibration") == 0
    before = {s: c.key(s, "x") for s in ("gains-unet", "gains-vae_decoder", "ranges-unet")}
    monkeypatch.setitem(cache.VERSIONS, "gains", cache.VERSIONS["gains"] + 1)
    after = {s: c.key(s, "x") for s in before}
    assert after["gains-unet"] != before["gains-unet"] and after["gains-vae_decoder"] != before["gains-vae_decoder"]
    assert after["ranges-unet"] == before["ranges-unet"]


def test_cache_keys_survive_a_moved_or_linked_cache(tmp_path):
    """Stage inputs name files in the cache (the capture folder, the export): the keys do not
    depend on how the cache folder is spelled."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    a, b = StageCache(real, log=print), StageCache(tmp_path / "link", log=print)
    assert a.key("stats-unet", str(real / "capture-1")) == b.key("stats-unet", str(tmp_path / "link" / "capture-1"))
    assert a.key("stats-unet", str(real / "capture-1")) == b.key(
        "stats-unet", str((tmp_path / "link" / "capture-1").resolve())
    )
    assert a.key("stats-unet", str(real / "capture-1")) != a.key("stats-unet", str(real / "capture-2"))


def test_cache_folder_is_atomic_and_reused(tmp_path):
    c = StageCache(tmp_path, log=lambda *_: None)
    calls = []

    def fail(tmp: Path) -> None:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        c.folder("quant", 1, make=fail)
    assert not c.path("quant", 1).exists()  # nothing half-written looks finished

    def make(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "model.onnx").write_text("graph")

    d = c.folder("quant", 1, make=make)
    assert (d / "model.onnx").read_text() == "graph" and (d / "done").is_file()
    assert c.folder("quant", 1, make=make) == d and len(calls) == 1
    assert c.folder("quant", 2, make=make) != d and len(calls) == 2


def test_cache_json_and_timings(tmp_path):
    c = StageCache(tmp_path, log=lambda *_: None)
    n = []
    with c.timed("search_s"):
        first = c.json("mixed", "x", make=lambda: n.append(1) or {"a": (1, 2)})
    assert first == {"a": [1, 2]} and c.json("mixed", "x", make=lambda: n.append(1) or {}) == first and n == [1]
    assert "search_s" in c.timings and c.peak_rss_gb["search_s"] > 0
    assert not list(tmp_path.glob(".*partial*"))


def test_stage_peak_memory_counts_child_processes(tmp_path):
    """A stage's peak RSS includes the processes it starts (statistics run in a child): a child that
    holds 400 MB for a second raises the stage's peak by about that much."""
    import subprocess
    import sys

    from edgeq.stages.memory import PeakRss, tree_rss

    base = tree_rss()
    c = StageCache(tmp_path, log=lambda *_: None)
    hold = "import numpy, time; a = numpy.ones(400 * 2**20 // 8); time.sleep(1.5)"
    with c.timed("child_s"):
        subprocess.run([sys.executable, "-c", hold], check=True)
    assert c.peak_rss_gb["child_s"] >= (base + 380 * 2**20) / 2**30, (c.peak_rss_gb, base)
    with PeakRss() as idle:
        pass
    assert idle.gb < c.peak_rss_gb["child_s"] - 0.3  # the child is gone: nothing left counted


def test_options_and_plan_round_trip(tmp_path):
    opts = BuildOptions("tiny-sd", out=tmp_path / "o", num_calib=3, calib_calls=40)
    assert BuildOptions.from_dict(json.loads(json.dumps(opts.to_dict()))) == opts
    profile, source, plan = resolve(BuildOptions("tiny-sd", target="openvino", out=tmp_path / "o", groups=2))
    assert plan.groups == 2 and plan.target == "openvino" and plan.group_mode == profile.calibration.group_mode
    assert plan.num_calib == source.spec.num_calib and plan.calib_prompts.endswith("calibration.txt")
    assert BuildPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert not (tmp_path / "o").exists()  # resolving writes nothing


@pytest.mark.parametrize(
    "opts, message",
    [
        (dict(groups=0), "--groups must be at least 1"),
        (dict(group_mode="bogus"), "--group-mode 'bogus'"),
        (dict(calib_calls=3), "fewer than the 20 denoising steps"),
        (dict(num_heldout=0), "--num-heldout must be at least 1"),
        (dict(range_method="median"), "--range-method 'median'"),
    ],
)
def test_plan_refuses_bad_options_before_any_work(tmp_path, opts, message):
    with pytest.raises(EdgeqError, match=message):
        resolve(BuildOptions("tiny-sd", cache_dir=tmp_path / "c", **opts))
    assert not (tmp_path / "c").exists()


def test_quant_plan_serialisation_keeps_order_and_optional_fields():
    common = dict(range_method="mse", policy={"mode": "int8"}, activations={}, weights=[])
    unet = UnetPlan("unet", groups=[], float_macs={}, mixed_precision=None, splits=[], smoothquant=None,
                    range_choice=None, quantized_nodes=["a"], excluded_nodes=[], **common)  # fmt: skip
    d = unet.to_dict()
    assert list(d)[:4] == ["component", "range_method", "policy", "groups"] and "gains" not in d
    assert UnetPlan.from_dict(d) == unet
    vae = ComponentPlan("vae_decoder", quantized_nodes=[], excluded_nodes=[], **common)
    q = QuantPlan("ort-cpu", "tiny-sd", "shared", unet, vae)
    assert QuantPlan.from_dict(json.loads(json.dumps(q.to_dict()))) == q


def test_print_config_resolves_without_building(tmp_path):
    r = cli(
        "build", "tiny-sd", "--target", "ort-mobile", "--groups", "2", "--out", str(tmp_path / "o"), "--print-config"
    )
    assert r.returncode == 0, r.stderr[-1500:]
    cfg = json.loads(r.stdout)
    assert cfg["plan"]["groups"] == 2 and cfg["plan"]["target"] == "ort-mobile"
    assert cfg["profile"]["export"]["static"] is True and "unet" in cfg["profile"]
    assert not (tmp_path / "o").exists()


def test_build_resolution_option(tmp_path):
    """--height/--width: in the plan, checked before any work, and exported (beside the default export)
    at that size, which the pipeline then captures and deploys."""
    from edgeq.stages.config import BuildOptions
    from edgeq.stages.context import prepare

    r = cli("build", "tiny-sd", "--height", "64", "--width", "48", "--print-config")
    assert r.returncode == 0, r.stderr[-1500:]
    plan = json.loads(r.stdout)["plan"]
    assert (plan["height"], plan["width"]) == (64, 48)
    r = cli("build", "tiny-sd", "--height", "60", "--out", str(tmp_path / "o"))
    assert (
        r.returncode == 2 and "--height 60 is not a positive multiple of 8" in r.stderr and "Traceback" not in r.stderr
    )
    assert not (tmp_path / "o").exists()
    ctx = prepare(BuildOptions("tiny-sd", height=64, width=48, cache_dir=tmp_path / "c"), log=lambda *a: None)
    assert ctx.export.folder.name == "fp32-64x48" and ctx.pipeline["resolution"] == [64, 48]


def test_build_memory_ceiling_option(tmp_path):
    """--max-memory: in the plan (the statistics' ceiling, see test_memory), refused below 1 GB before
    any work."""
    r = cli("build", "tiny-sd", "--max-memory", "20", "--print-config")
    assert r.returncode == 0, r.stderr[-1500:]
    assert json.loads(r.stdout)["plan"]["max_memory_gb"] == 20
    r = cli("build", "tiny-sd", "--max-memory", "0.5", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "--max-memory 0.5 GB is too little" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_component_stats_and_capture_round_trip(tmp_path):
    """The statistics stage's record: policy, decisions and tensors in JSON, histograms in their file."""
    import numpy as np

    from edgeq.calibrate.capture import Capture, CaptureSettings
    from edgeq.calibrate.collect import Stats
    from edgeq.calibrate.histogram import Hist
    from edgeq.profiles import load_profile
    from edgeq.quantize.policy import Decision
    from edgeq.stages.calibration import ComponentStats

    counts = np.zeros(2048, np.int64)
    counts[3] = 5
    stats = Stats(["t0"], [999.0, 1.0], {"t0": [Hist(counts, 0, -1.0, 2.0, 5, 3.0)] * 2})
    stats.save(tmp_path / "s.npz")
    policy = load_profile("ort-cpu").policy("unet")
    cs = ComponentStats(
        "unet", policy, (Decision("/conv", "Conv", True, "quantized"),), ("t0",), stats, stats_file=tmp_path / "s.npz"
    )
    back = ComponentStats.from_dict(json.loads(json.dumps(cs.to_dict())))
    assert back.policy == policy and back.decisions == cs.decisions and back.tensors == ("t0",)
    assert back.stats.tensors == ["t0"] and back.stats.hists["t0"][1].hi == 2.0
    cap = Capture(tmp_path, CaptureSettings(("a", "b"), 0, 20, 7.5, "ddim"), (999.0, 1.0))
    assert Capture.from_dict(json.loads(json.dumps(cap.to_dict()))) == cap


def test_report_and_metrics_round_trip():
    from edgeq.stages.select import VariantMetrics
    from edgeq.verify.report import Report

    rows = {"shared": [{"index": 0, "sqnr_db": 30.0}], "per-group": [{"index": 0, "sqnr_db": 31.5}]}
    m = VariantMetrics.from_dict(json.loads(json.dumps(VariantMetrics(rows).to_dict())))
    assert m.rows == rows and m.worst("per-group") == 31.5
    rep = Report(True, "ort-cpu", "tiny-sd", [{"passed": True}], [], {"psnr_db": 40.0}, variants=rows)
    assert Report.from_dict(json.loads(json.dumps(rep.to_dict()))) == rep and rep


def test_long_stage_prints_its_estimate_from_the_first_item(monkeypatch, capsys):
    """After the first item: the count, the first item's time, the estimate, and the option that sets it."""
    import time

    from edgeq import progress as prog

    monkeypatch.setattr(prog, "MIN_ESTIMATE_S", 0.1)
    got = []
    for x in prog.progress(range(5), desc="statistics unet", unit="call", knob="--calib-calls"):
        time.sleep(0.05)
        got.append(x)
    assert got == [0, 1, 2, 3, 4]
    err = capsys.readouterr()
    line = next(x for x in (err.out + err.err).splitlines() if "the first took" in x)
    assert line.startswith("statistics unet: 5 calls, the first took 0.0") and "--calib-calls sets the count" in line
    monkeypatch.undo()
    assert prog.estimate_line("check", 10, "call", 1.0, None) is None  # 10 s: too short to announce
    assert prog.estimate_line("capture", 32, "prompt", 100.0, "--num-calib") == (
        "capture: 32 prompts, the first took 100.00 s: about 53 min in all; --num-calib sets the count"
    )
    assert prog.duration(7200) == "2.0 h" and prog.duration(45) == "45 s"


def test_build_estimate_leaves_out_cached_statistics():
    """The estimate printed after the first FP32 call names each stage's calls and knob; statistics
    that are cached cost nothing and are not listed."""
    from types import SimpleNamespace

    from edgeq.stages.calibration import build_estimate

    plan = SimpleNamespace(calib_calls=4, num_calib=1, num_heldout=1, groups=4, group_mode="auto")
    ctx = SimpleNamespace(plan=plan)
    fresh = build_estimate(ctx, 10.0, 4)
    assert "statistics ~" in fresh and "--calib-calls" in fresh and "capture ~" in fresh
    cached = build_estimate(ctx, 10.0, 4, stats_cached=True)
    assert "statistics" not in cached and "capture ~" in cached and "UNet checks ~" in cached


def test_fp32_decoder_decodes_each_held_out_latent_once(tiny_exports):
    """The checks' FP32 VAE decoder (the VAE's PSNR and the end-to-end reference decode the same
    held-out latents) runs each distinct latent once and hands back the same images."""
    import numpy as np

    from edgeq.runtime.sessions import OrtRunner
    from edgeq.stages.checks import DecodeOnce

    class Counting:
        def __init__(self, runner):
            self.runner, self.calls, self.input_names = runner, 0, runner.input_names

        def run(self, feeds):
            self.calls += 1
            return self.runner.run(feeds)

    inner = Counting(OrtRunner(tiny_exports["sd15"] / "vae_decoder" / "model.onnx"))
    dec = DecodeOnce(inner)
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((1, 4, 8, 8)).astype(np.float32) for _ in range(2))
    first = dec.run({"latent_sample": a})["sample"]
    again = dec.run({"latent_sample": a.copy()})["sample"]  # equal content, another array
    other = dec.run({"latent_sample": b})["sample"]
    assert inner.calls == 2
    assert np.array_equal(first, again) and np.array_equal(first, inner.runner.run({"latent_sample": a})["sample"])
    assert not np.array_equal(first, other)
