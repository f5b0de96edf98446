"""Export of SD1.5 / SD2.1 / SDXL-structured pipelines, and the torch-free runtime against diffusers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import FAMILIES

from edgeq.frontend import export as export_mod
from edgeq.frontend import validate as validate_mod
from edgeq.frontend.export import ExportSettings, export
from edgeq.manifest import read_manifest
from edgeq.models.weights import resolve
from edgeq.runtime.pipeline import GenerateOptions, Pipeline

OPTIMUM_IO = {
    "unet": (["sample", "timestep", "encoder_hidden_states"], ["out_sample"]),
    "vae_decoder": (["latent_sample"], ["sample"]),
    "vae_encoder": (["sample"], ["latent_parameters"]),
    "text_encoder": (["input_ids"], ["last_hidden_state", "pooler_output"]),
}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


@pytest.mark.parametrize("family", FAMILIES)
def test_export_layout_names_and_validation(tiny_exports, family):
    folder = tiny_exports[family]
    m = read_manifest(folder)
    assert m["model"]["family"] == family
    for name, (ins, outs) in OPTIMUM_IO.items():
        graph = onnx.load(str(folder / name / "model.onnx"), load_external_data=False).graph
        got_in = [i.name for i in graph.input if i.name not in {x.name for x in graph.initializer}]
        assert got_in[: len(ins)] == ins
        assert [o.name for o in graph.output][: len(outs)] == outs
        assert (folder / name / "config.json").is_file()
        vals = m["components"][name]["validation"]
        assert vals and all(v["max_rel"] <= v["tolerance"] for v in vals), vals
    assert (
        min(
            op.version for op in onnx.load(str(folder / "unet/model.onnx")).opset_import if op.domain in ("", "ai.onnx")
        )
        >= 17
    )
    if family == "sdxl":
        unet_inputs = [i.name for i in onnx.load(str(folder / "unet/model.onnx")).graph.input]
        assert {"text_embeds", "time_ids"} <= set(unet_inputs)
        assert (folder / "text_encoder_2/model.onnx").is_file() and (folder / "tokenizer_2/tokenizer.onnx").is_file()
    for name in (
        "model_index.json",
        "scheduler/scheduler_config.json",
        "tokenizer/tokenizer.onnx",
        "tokenizer/vocab.json",
    ):
        assert (folder / name).is_file()
    for rel, info in m["artifacts"].items():
        assert (folder / rel).stat().st_size == info["bytes"]


def test_dynamic_axes(tiny_exports):
    graph = onnx.load(str(tiny_exports["sd15"] / "unet/model.onnx")).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == "batch" and dims[2] == "height" and dims[3] == "width"


def test_second_export_is_reused(tiny_models, tiny_exports):
    before = (tiny_exports["sd15"] / "manifest.json").stat().st_mtime_ns
    result = export(resolve(str(tiny_models["sd15"])), tiny_exports["sd15"], log=lambda *_: None)
    assert result.reused and (tiny_exports["sd15"] / "manifest.json").stat().st_mtime_ns == before
    # a dynamic export serves any batch (guidance 0 runs one item): the traced batch does not key it
    one = export(resolve(str(tiny_models["sd15"])), tiny_exports["sd15"], ExportSettings(batch=1), log=lambda *_: None)
    assert one.reused
    source = resolve(str(tiny_models["sd15"]))
    assert export_mod.cache_key(source, ExportSettings(static=True, batch=1)) != export_mod.cache_key(
        source, ExportSettings(static=True, batch=2)
    )


def test_static_shapes_and_external_data(tiny_models, tmp_path, monkeypatch):
    """--static fixes every axis; a graph over the protobuf limit gets ONE external data file.

    The 2 GB limit is lowered so a tiny model takes the same path as a full-size UNet.
    """
    monkeypatch.setattr(export_mod, "PROTOBUF_LIMIT", 1000)
    out = tmp_path / "static"
    export(
        resolve(str(tiny_models["sd15"])),
        out,
        ExportSettings(static=True, batch=2, height=32, width=32),
        log=lambda *_: None,
    )
    unet = onnx.load(str(out / "unet/model.onnx"), load_external_data=False)
    dims = [d.dim_value for d in unet.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 4, 16, 16]  # the test VAE downsamples by 2
    files = sorted(p.name for p in (out / "unet").iterdir())
    assert files == ["config.json", "model.onnx", "model.onnx_data"]
    img = Pipeline(out).generate(GenerateOptions(prompt="a red cat", steps=2))
    assert img.shape == (32, 32, 3)
    from edgeq.errors import EdgeqError

    with pytest.raises(EdgeqError, match="static shapes"):
        Pipeline(out).generate(GenerateOptions(prompt="a red cat", steps=2, height=64, width=64))


@pytest.mark.parametrize("family,scheduler", [(f, s) for f in FAMILIES for s in ("ddim", "euler", "dpmpp_2m")])
def test_runtime_reproduces_diffusers(tiny_models, tiny_exports, family, scheduler):
    import torch
    from diffusers import DDIMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    ref = DiffusionPipeline.from_pretrained(tiny_models[family], local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    cls = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "dpmpp_2m": DPMSolverMultistepScheduler}[scheduler]
    ref.scheduler = cls.from_config(ref.scheduler.config)
    ours = Pipeline(tiny_exports[family])
    h, w = ours.p["resolution"]
    latents = np.random.default_rng(7).standard_normal((1, 4, h // 2, w // 2)).astype(np.float32)
    kw = dict(prompt="a red cat on a house", negative_prompt="blue", num_inference_steps=6, guidance_scale=6.0)
    want = ref(**kw, latents=torch.from_numpy(latents), output_type="np", height=h, width=w).images[0]
    want = (want * 255).round().astype(np.uint8)
    got = ours.generate(
        GenerateOptions(
            prompt=kw["prompt"], negative_prompt="blue", steps=6, guidance=6.0, scheduler=scheduler, latents=latents
        )
    )
    assert got.shape == want.shape
    assert psnr(got, want) >= 40.0


def test_edgeq_run_does_not_import_torch(tiny_exports, tmp_path):
    out = tmp_path / "img.png"
    code = (
        "import sys; from edgeq.cli.main import main; "
        f"rc = main(['run', {str(tiny_exports['sd15'])!r}, '--prompt', 'a red cat', '--steps', '3', '-o', {str(out)!r}]); "
        "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
        "print('IMPORTED', bad); sys.exit(rc or (3 if bad else 0))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    from PIL import Image

    assert Image.open(out).size == (16, 16)


def test_manifest_records_versions_and_hashes(tiny_exports):
    m = json.loads((tiny_exports["sd21"] / "manifest.json").read_text())
    assert m["pipeline"]["prediction_type"] == "v_prediction"
    assert {"onnx", "onnxruntime", "torch", "diffusers"} <= set(m["versions"])
    assert all(len(a["sha256"]) == 64 for a in m["artifacts"].values())


def test_dynamic_graph_checked_at_half_the_traced_size(tiny_models, tmp_path, monkeypatch):
    """Latents of 32 or more: traced at the build's size, checked against torch at half of it (a
    quarter of the work, and a second size through the dynamic axes); the graph runs at both."""
    seen: list[tuple[int, dict]] = []
    real = validate_mod.random_inputs

    def spy(comp, shapes, configs, seed):
        if comp.name == "unet":
            seen.append((seed, dict(shapes)))
        return real(comp, shapes, configs, seed)

    monkeypatch.setattr(validate_mod, "random_inputs", spy)
    out = tmp_path / "dyn"
    res = export(resolve(str(tiny_models["sd15"])), out, ExportSettings(height=128, width=128), log=lambda *_: None)
    traced, checked = dict(seen)[0], dict(seen)[1]  # seed 0: the trace's inputs, seed 1: the check's
    assert tuple(traced["sample"])[2:] == (64, 64) and tuple(checked["sample"])[2:] == (32, 32)
    assert all(v.passed for vs in res.validations.values() for v in vs)
    for size in (128, 64):
        assert Pipeline(out).generate(GenerateOptions(prompt="a red cat", steps=2, height=size, width=size)).shape == (
            size,
            size,
            3,
        )


def test_failed_validation_is_a_clear_error(tiny_models, tmp_path, monkeypatch):
    """A graph that disagrees with torch stops the export: one message, nothing left behind."""
    import dataclasses

    from edgeq.errors import EdgeqError

    real = validate_mod.validate_graph
    monkeypatch.setattr(
        validate_mod, "validate_graph", lambda *a, **k: [dataclasses.replace(v, max_rel=0.5) for v in real(*a, **k)]
    )
    with pytest.raises(EdgeqError, match="disagrees with torch"):
        export(resolve(str(tiny_models["sd15"])), tmp_path / "o", log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []


def test_large_graph_weights_are_gathered_a_tensor_at_a_time(tmp_path):
    """torch.onnx writes a graph over 2 GB with one file per tensor; the export gathers them into one
    page-aligned ``model.onnx_data`` without loading the model's weights (small tensors go inline), and
    the result computes exactly what the scattered graph computed."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgeq.frontend.export import gather_external_data

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((64, 32)).astype(np.float32)  # 8 KiB: external
    w2 = rng.standard_normal((32, 16)).astype(np.float32)  # 2 KiB: external
    b = rng.standard_normal(16).astype(np.float32)  # 64 bytes: inline
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="/m/a/MatMul"),
            helper.make_node("MatMul", ["h", "w2"], ["h2"], name="/m/b/MatMul"),
            helper.make_node("Add", ["h2", "b"], ["y"], name="/m/b/Add"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 16])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    onnx.save_model(model, str(scratch / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0)  # fmt: skip
    assert len(list(scratch.iterdir())) == 4  # the graph and a file per tensor, as torch.onnx writes them
    x = rng.standard_normal((3, 64)).astype(np.float32)
    want = ort.InferenceSession(str(scratch / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    light = onnx.load(str(scratch / "model.onnx"), load_external_data=False)
    out = tmp_path / "out"
    out.mkdir()
    gather_external_data(light, scratch, out / "model.onnx", "model.onnx_data")
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.onnx_data"]
    saved = onnx.load(str(out / "model.onnx"), load_external_data=False)
    where = {t.name: {e.key: e.value for e in t.external_data} for t in saved.graph.initializer}
    assert where["b"] == {} and numpy_helper.to_array(saved.graph.initializer[2]).tolist() == b.tolist()
    assert {where["w1"]["location"], where["w2"]["location"]} == {"model.onnx_data"}
    assert all(int(where[n]["offset"]) % 4096 == 0 for n in ("w1", "w2"))
    got = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)


def test_export_order_puts_the_largest_module_last_and_releases_it(tiny_models):
    """Components are exported smallest module first, the VAE's two graphs together; a released module
    is gone from the pipeline."""
    from edgeq.models.weights import load_pipeline

    source = resolve(str(tiny_models["sdxl"]))
    pipe = load_pipeline(source)
    order = [c.module for c in export_mod.export_order(pipe, source.spec.components)]
    sizes = [sum(p.numel() for p in getattr(pipe, m).parameters()) for m in order]
    assert sizes == sorted(sizes) and set(order) == {c.module for c in source.spec.components}
    assert order[-1] == "unet"  # the largest module, exported alone once the others are released
    vae = [i for i, m in enumerate(order) if m == "vae"]
    assert vae == list(range(vae[0], vae[0] + len(vae)))
    export_mod.release(pipe, "unet")
    assert pipe.unet is None
