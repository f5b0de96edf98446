"""`edgeq build --target ort-cpu` end to end: tiny-sd's gates, the build folder, caching and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, run_without_torch

from edgeq.calibrate.capture import CaptureSettings, capture, capture_pipeline
from edgeq.errors import EdgeqError
from edgeq.runtime.sessions import OrtRunner

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_build(target_build, tiny_sd_cache):
    out, r = target_build("ort-cpu")
    root = out.parent
    if not (root / "cache").exists():
        (root / "cache").symlink_to(tiny_sd_cache, target_is_directory=True)
    return root, r


def test_tiny_sd_build_passes_its_gates(tiny_build):
    root, r = tiny_build
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads((root / "out" / "report.json").read_text())
    assert rep["passed"] is True and rep["target"] == "ort-cpu" and rep["model"] == "tiny-sd"
    assert rep["gates"] and all(g["passed"] for g in rep["gates"])
    assert {g["component"] for g in rep["gates"]} == {"unet", "vae_decoder", "pipeline"}
    assert len(rep["unet_groups"]) == 4
    for row in rep["unet_groups"]:
        assert {"index", "t_min", "t_max", "sqnr_db", "cosine"} <= set(row)
        assert row["sqnr_db"] >= 20.0 and row["cosine"] >= 0.99
    e2e = rep["e2e"]
    assert e2e["psnr_db"] >= 20.0 and e2e["ssim"] >= 0.8
    for attr in ("colour", "shape"):
        assert e2e["adherence_fp32"][attr] - e2e["adherence"][attr] <= 5.0
    # no gains variant: auto may not deploy it on ONNX Runtime (its Convs would run float)
    assert set(rep["variants"]) == {"shared", "per-group"}


def test_full_recheck_makes_the_images_again_and_agrees(tiny_build, tmp_path):
    """The build's end-to-end check reuses the INT8 images its kernel-fidelity stage made for the
    bundle's prompts; `edgeq check --full` (on a copy) makes every image again: same figures."""
    import shutil

    root, r = tiny_build
    assert r.returncode == 0, r.stderr[-3000:]
    copy = tmp_path / "copy"
    shutil.copytree(root / "out", copy)
    p = cli("check", str(copy), "--full")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    built = json.loads((root / "out" / "report.json").read_text())["e2e"]
    again = json.loads((copy / "report.json").read_text())["e2e"]
    assert again["images"] == built["images"]
    for k in ("psnr_db", "ssim"):
        assert again[k] == pytest.approx(built[k], rel=1e-9), k


def test_host_device_check_reuses_the_unet_checks_outputs_and_agrees(tiny_build, tmp_path):
    """The build's own device check takes the deployed graphs' outputs of the bundle's calls from the
    UNet checks (ort-cpu checks run the packaged graphs with the deployable's runner); `edgeq check`
    runs those calls again: the same kernel-fidelity figures, bit for bit."""
    root, r = tiny_build
    assert r.returncode == 0, r.stderr[-3000:]
    assert "outputs of the bundle's" in r.stdout and "come from the UNet checks" in r.stdout
    host = json.loads((root / "out" / "manifest.json").read_text())["kernel_fidelity"]["host"]
    p = cli("check", str(root / "out"), "--calls-only", "--report", str(tmp_path))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    again = json.loads((tmp_path / "device_report.json").read_text())
    assert again["family"] == host["family"]
    assert [g["calls"] for g in again["groups"]] == [g["calls"] for g in host["groups"]]
    for a, b in zip(again["groups"], host["groups"]):
        for k in ("exact_db", "deployed_db", "gap_db", "kernel_db"):
            assert a[k] == b[k], (k, a, b)


def test_device_check_loads_each_component_once_and_agrees_with_the_build(tiny_build):
    """`edgeq check` holds one stage at a time (low memory) and runs the bundle's UNet calls while the
    images' UNet is loaded: each component is loaded once, and the figures are the build's own."""
    from edgeq.manifest import read_manifest
    from edgeq.runtime.pipeline import default_runner
    from edgeq.targets import for_manifest
    from edgeq.verify.device import device_check

    root, r = tiny_build
    assert r.returncode == 0, r.stderr[-3000:]
    out = root / "out"
    manifest = read_manifest(out)
    loads: list[str] = []

    def counted(factory):
        def make(build, info):
            loads.append(next(n for n, c in manifest["components"].items() if c == info))
            return factory(build, info)

        return make

    factories = {"onnxruntime": default_runner, **for_manifest(manifest).runners()}
    runners = {k: counted(f) for k, f in factories.items()}
    res = device_check(out, runners=runners, log=lambda *a: None)
    assert res.passed
    assert sorted(loads) == ["text_encoder", "unet", "vae_decoder"]  # the UNet once, not once per use
    host = manifest["kernel_fidelity"]["host"]
    assert [(g.index, g.gap_db, g.deployed_db) for g in res.groups] == [
        (g["index"], g["gap_db"], g["deployed_db"]) for g in host["groups"]
    ]
    assert res.e2e["images"] == host["e2e"]["images"] > 0
    assert res.e2e["psnr_db"] == pytest.approx(host["e2e"]["psnr_db"], rel=1e-9)  # the build host's images


def test_build_folder_contents(tiny_build):
    root, _ = tiny_build
    out = root / "out"
    for f in (
        "manifest.json",
        "quant_plan.json",
        "quant_summary.txt",
        "report.md",
        "report.html",
        "grid.png",
        "sqnr_per_group.png",
        "tokenizer/tokenizer.onnx",
        "scheduler/scheduler_config.json",
    ):
        assert (out / f).is_file(), f
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "passed" and m["kind"] == "int8" and m["target"] == "ort-cpu"
    assert len(m["quantization"]["groups"]) == 4 and {"onnxruntime", "onnx", "numpy"} <= set(m["versions"])
    assert all(len(a["sha256"]) == 64 for a in m["artifacts"].values())
    plan = json.loads((out / "quant_plan.json").read_text())
    acts = plan["unet"]["activations"]
    assert acts and all(len(a["per_group"]) == 4 and a["shared"]["scale"] > 0 for a in acts.values())
    assert all(e["reason"] for e in plan["unet"]["excluded_nodes"])
    assert '<img src="data:image/png;base64,' in (out / "report.html").read_text()
    # every timed stage with its peak memory (process tree), in the manifest and the report
    stages = ("export_s", "capture_calibration_s", "statistics_unet_s", "package_s", "kernel_fidelity_s", "check_e2e_s")
    assert set(stages) <= set(m["timings"]) and set(stages) <= set(m["peak_rss_gb"])
    assert all(0 < m["peak_rss_gb"][k] < 24 for k in stages)  # reused stages take little
    assert "| statistics_unet | " in (out / "report.md").read_text()


def test_int8_build_runs_without_torch(tiny_build, tmp_path):
    root, _ = tiny_build
    png = tmp_path / "q.png"
    r = run_without_torch(root / "out", png, "a large red circle in the center on a blue background")
    assert r.returncode == 0, r.stderr
    assert png.stat().st_size > 0


def test_rerun_reuses_cached_stages(tiny_build, tmp_path):
    root, _ = tiny_build
    shards = sorted((root / "cache").glob("capture-*/shard-*.npz"))
    stats = sorted((root / "cache").glob("stats-*.npz"))
    before = {p: p.stat().st_mtime_ns for p in shards + stats}
    args = ("--num-heldout", "2")  # the checks' size is not what this test is about
    r = cli("quantize", "tiny-sd", *args, "--out", str(tmp_path / "again"), "--cache-dir", str(root / "cache"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "reusing the export" in r.stdout and "reusing statistics" in r.stdout
    assert {p: p.stat().st_mtime_ns for p in shards + stats} == before


def test_same_inputs_give_same_scales(tiny_build, tmp_path):
    root, _ = tiny_build
    a = json.loads((root / "out" / "quant_plan.json").read_text())
    r = cli(
        "quantize",
        "tiny-sd",
        "--out",
        str(tmp_path / "b"),
        "--cache-dir",
        str(tmp_path / "fresh-cache"),
        "--num-heldout",
        "2",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    b = json.loads((tmp_path / "b" / "quant_plan.json").read_text())
    assert a["unet"]["activations"] == b["unet"]["activations"]


def test_failed_gate_exits_nonzero_and_keeps_artifacts(tiny_build, tmp_path):
    root, _ = tiny_build
    strict = tmp_path / "strict.toml"
    strict.write_text('extends = "ort-cpu"\n[gates]\nunet_sqnr_db = 99.0\n')
    out = tmp_path / "out"
    r = cli(
        "build",
        "tiny-sd",
        "--target",
        str(strict),
        "--out",
        str(out),
        "--cache-dir",
        str(root / "cache"),
        "--num-heldout",
        "4",
    )
    assert r.returncode == 3, r.stderr[-2000:]
    assert "gate failed: unet group" in r.stderr and "sqnr_db" in r.stderr
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--groups", "0"], "--groups must be at least 1"),
        (["--calib-prompts", "/nonexistent/prompts.txt"], "does not exist"),
        (["--target", "no-such-target"], "no target profile"),
        (["--calib-calls", "0"], "--calib-calls must be at least 1"),
        (["--calib-calls", "5"], "--calib-calls 5 is fewer than the 20 denoising steps"),
    ],
)
def test_bad_options(args, message, tmp_path):
    r = cli("build", "tiny-sd", "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"), *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr[-1500:]


def test_empty_prompt_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    r = cli("calibrate", "tiny-sd", "--calib-prompts", str(empty), "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 2 and "has no prompts" in r.stderr


def test_interrupted_capture_resumes_and_corrupt_shard_is_named(tiny_exports, tmp_path, monkeypatch):
    from edgeq.runtime import pipeline as pipeline_mod

    settings = CaptureSettings(("a red cat", "a blue dog", "a cat on a house"), 0, 3, 5.0, "ddim")
    real = pipeline_mod.Pipeline.denoise_many
    calls = {"n": 0}

    def flaky(self, o):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, o)

    monkeypatch.setattr(pipeline_mod.Pipeline, "denoise_many", flaky)
    folder = tmp_path / "cap"
    with pytest.raises(KeyboardInterrupt):
        capture(tiny_exports["sd15"], folder, settings)
    done = sorted(folder.glob("shard-*.npz"))
    assert [p.name for p in done] == ["shard-00000.npz", "shard-00001.npz"]
    stamps = {p: p.stat().st_mtime_ns for p in done}
    monkeypatch.setattr(pipeline_mod.Pipeline, "denoise_many", real)
    cap = capture(tiny_exports["sd15"], folder, settings)
    assert {p: p.stat().st_mtime_ns for p in done} == stamps
    samples = list(cap.unet_samples())
    assert len(samples) == 9 and [s.step for s in samples[:3]] == [0, 1, 2]
    assert all(np.isfinite(s.feeds["sample"]).all() for s in samples)
    # the FP32 output is captured with each input: the checks compare against it without rerunning
    fp32 = OrtRunner(tiny_exports["sd15"] / "unet" / "model.onnx")
    for s in samples[::4]:
        np.testing.assert_array_equal(s.reference, fp32.run(s.feeds)["out_sample"])
    # a budget of calls visits every step before any step twice, rotating through the prompts
    assert cap.calls(3) == [(0, 0), (1, 1), (2, 2)]
    assert cap.calls(5) == [(0, 0), (1, 0), (1, 1), (2, 1), (2, 2)]
    assert [(s.prompt_index, s.step) for s in cap.unet_samples(4)] == cap.calls(4)
    assert sorted(cap.calls(None)) == sorted(cap.calls(9)) and len(set(cap.calls(None))) == 9
    (folder / "shard-00001.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(EdgeqError, match="shard-00001.npz is damaged"):
        list(cap.unet_samples())


def test_capture_reports_its_first_unet_call_before_the_prompt_ends(tiny_exports, tmp_path, monkeypatch):
    """The build's estimate is made from the first FP32 UNet call: ``on_first`` runs once, after one
    UNet call of the first prompt and before its second, with that call's time."""
    from edgeq.runtime import pipeline as pipeline_mod

    settings = CaptureSettings(("a red cat", "a blue dog"), 0, 3, 5.0, "ddim")
    real_init = pipeline_mod.Pipeline.__init__
    unet_calls: list[int] = []

    def counting_init(self, *a, **kw):
        real_init(self, *a, **kw)
        unet = self.runners["unet"]
        real_run = unet.run

        def run(feeds):
            unet_calls.append(1)
            return real_run(feeds)

        unet.run = run

    monkeypatch.setattr(pipeline_mod.Pipeline, "__init__", counting_init)
    seen: list[tuple[float, int]] = []
    capture(tiny_exports["sd15"], tmp_path / "cap", settings, on_first=lambda s: seen.append((s, len(unet_calls))))
    assert len(unet_calls) == 6  # 2 prompts x 3 steps, all real calls
    assert len(seen) == 1 and seen[0][1] == 1 and 0 < seen[0][0] < 60
    seen.clear()
    capture(tiny_exports["sd15"], tmp_path / "cap", settings, on_first=lambda s: seen.append((s, 0)))
    assert seen == []  # all cached: nothing captured, nothing to estimate


def test_float_vae_profile_and_custom_profile_path(tiny_models, sd15_cache, tmp_path):
    """A profile file given by path, keeping the VAE decoder in FP32: packaged as exported."""
    prof = tmp_path / "ort-cpu-fp32-vae.toml"
    prof.write_text(
        'extends = "ort-cpu"\n[vae_decoder]\nmode = "float"\nreason = "kept FP32 for this test"\nexclude = []\n'
    )
    out = tmp_path / "out"
    r = cli(
        "build",
        str(tiny_models["sd15"]),
        "--target",
        str(prof),
        "--out",
        str(out),
        "--cache-dir",
        str(sd15_cache),
        "--num-calib",
        "3",
        "--num-heldout",
        "2",
        "--groups",
        "2",
    )
    assert r.returncode in (0, 3), r.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["components"]["vae_decoder"]["precision"] == "fp32"
    assert not any(g["component"] == "vae_decoder" for g in m["gates"])
    for rel in ("vae_decoder/model.onnx", "vae_decoder/config.json", "model_index.json", "quant_plan.json"):
        assert rel in m["artifacts"], rel


def test_bench_reports_latency_memory_and_size_next_to_fp32(tiny_build, tmp_path):
    out = tiny_build[0] / "out"
    dest = tmp_path / "bench.json"
    r = cli("bench", str(out), "--repeats", "3", "--warmup", "1", "--out", str(dest))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(dest.read_text())
    assert set(res["components"]) == {"text_encoder", "unet", "vae_decoder", "pipeline"}
    for comp, row in res["components"].items():
        for v in ("fp32", "build"):
            m = row[v]
            assert 0 < m["min_s"] <= m["median_s"] <= m["max_s"] and m["peak_rss_gb"] > 0.05, (comp, v)
        assert row["speedup"] > 0
    unet = res["components"]["unet"]
    assert unet["build"]["bytes"] < unet["fp32"]["bytes"]  # int8 weights
    assert "int8" in unet["build"]["precision"]
    assert "| unet |" in dest.with_suffix(".md").read_text() and "| unet |" in r.stdout
    r = cli("bench", str(out), "--repeats", "0")
    assert r.returncode == 2 and "--repeats must be at least 1" in r.stderr


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_capture_graph_computes_the_same_numbers_for_every_target(tiny_exports, family):
    """The calibration capture's UNet (the graph with a target's calibrated tensors as extra outputs,
    one batch item at a time) computes the same noise prediction, bit for bit, for every shipped
    target's tensors on every CPU family (int8 attention included) and for the plain graph with no
    extra output (what the capture runs where the tensors do not fit): trajectories do not depend on
    the target, so one capture serves them all."""
    import onnx

    from edgeq.calibrate.collect import augmented_session
    from edgeq.profiles import load_profile, profile_names
    from edgeq.quantize.policy import decide, tensors_to_calibrate
    from edgeq.runtime.cpu import FAMILIES
    from edgeq.runtime.sessions import batch_items
    from edgeq.stages.context import for_family

    path = tiny_exports[family] / "unet" / "model.onnx"
    graph = onnx.load(str(path), load_external_data=False).graph
    plain = augmented_session(path, [])
    rng = np.random.default_rng(1)
    dims = {"batch": 2, "height": 32, "width": 32, "sequence": 77}
    feeds = {
        i.name: rng.standard_normal([d if isinstance(d, int) else dims[d] for d in i.shape]).astype(np.float32)
        for i in plain.get_inputs()
    }
    feeds["timestep"] = np.array(700.0, np.float32)
    ref = plain.run(["out_sample"], feeds)[0]
    sets: dict[tuple[str, ...], str] = {}
    for name in profile_names():
        for fam in FAMILIES:
            policy = for_family(load_profile(name), 8, fam).policy("unet")
            if policy.mode == "int8":
                sets.setdefault(tuple(tensors_to_calibrate(graph, decide(graph, policy), policy)), f"{name}/{fam}")
    assert len(sets) >= 2  # targets differ in what they calibrate (attention scores or not)
    for tensors, who in sets.items():
        sess = augmented_session(path, list(tensors))
        got = np.concatenate([sess.run(["out_sample"], item)[0] for item in batch_items(feeds)])
        assert np.array_equal(got, ref), f"{who}: {np.abs(got - ref).max():.2e}"


def test_statistics_collected_during_the_capture_equal_those_collected_after(tiny_exports, tmp_path):
    """The calibration capture runs the UNet as the statistics' augmented graph, one batch item at a
    time, and folds the calls the statistics use into their histograms as it runs them (no second pass
    of the FP32 UNet): the histograms are exactly those of the separate pass over the captured calls;
    the trajectories are the plain capture's to float rounding, and bit for bit the same whether a
    capture folds statistics or not, or is resumed."""
    import onnx

    from edgeq.calibrate.collect import StatsRequest, collect
    from edgeq.profiles import load_profile
    from edgeq.quantize.policy import decide, tensors_to_calibrate

    path = tiny_exports["sd15"] / "unet" / "model.onnx"
    policy = load_profile("ort-cpu").policy("unet")
    graph = onnx.load(str(path), load_external_data=False).graph
    tensors = tensors_to_calibrate(graph, decide(graph, policy), policy)
    settings = CaptureSettings(("a red cat", "a blue dog", "a green house"), 0, 3, 5.0, "ddim")
    plain = capture(tiny_exports["sd15"], tmp_path / "plain", settings)
    assert "vae_decoder" not in capture_pipeline(tiny_exports["sd15"], settings).runners  # final latents only
    req = StatsRequest(path, tensors, set(plain.calls(5)))
    cap = capture(tiny_exports["sd15"], tmp_path / "fused", settings, stats=req)
    assert req.result is not None
    after = collect(path, tensors, lambda: ((s.step, s.feeds) for s in cap.unet_samples(5)), list(cap.timesteps), 5)
    assert req.result.timesteps == list(cap.timesteps)
    for t in tensors:
        for a, b in zip(after.hists[t], req.result.hists[t]):
            assert np.array_equal(a.counts, b.counts) and (a.lo, a.hi, a.n, a.exp) == (b.lo, b.hi, b.n, b.exp)
    for a, b in zip(plain.unet_samples(), cap.unet_samples()):
        np.testing.assert_allclose(a.reference, b.reference, rtol=1e-4, atol=1e-5)
    # no statistics folded (cached), or a resumed capture: the same trajectories, bit for bit
    bare = capture(tiny_exports["sd15"], tmp_path / "bare", settings, stats=StatsRequest(path, tensors, set()))
    shard = tmp_path / "fused" / "shard-00002.npz"
    before = shard.read_bytes()
    shard.unlink()
    req2 = StatsRequest(path, tensors, set(plain.calls(5)))
    capture(tiny_exports["sd15"], tmp_path / "fused", settings, stats=req2)
    assert req2.result is None  # resumed: the statistics are collected after it
    assert shard.read_bytes() == before
    for a, b in zip(bare.unet_samples(), cap.unet_samples()):
        assert np.array_equal(a.reference, b.reference) and np.array_equal(a.feeds["sample"], b.feeds["sample"])
