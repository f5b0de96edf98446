"""Finding weights offline (explicit path, Hugging Face cache, single-file checkpoint) and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import cli

from edgeq.cli.main import main
from edgeq.errors import EdgeqError
from edgeq.models.weights import resolve


def fake_hf_cache(root: Path, repo_id: str, model_dir: Path) -> Path:
    """The Hugging Face hub cache layout: models--org--name/{refs/main, snapshots/<rev>/...}."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    rev = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(model_dir, repo / "snapshots" / rev)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    return root


def test_preset_found_in_hf_cache_and_exported(tiny_models, tmp_path):
    cache = fake_hf_cache(tmp_path / "hub", "stable-diffusion-v1-5/stable-diffusion-v1-5", tiny_models["sd15"])
    env = {"HF_HUB_CACHE": str(cache)}
    r = cli("models", env=env)
    assert r.returncode == 0 and "hf_cache" in r.stdout.splitlines()[1], r.stdout
    out = tmp_path / "build"
    r = cli("export", "sd15", "--out", str(out), "--height", "32", "--width", "32", env=env)
    assert r.returncode == 0, r.stderr
    assert "hf_cache" in r.stdout and (out / "unet/model.onnx").is_file()


def test_single_file_checkpoint_round_trip(tiny_models, tmp_path):
    """An original-layout .safetensors made from our own weights loads through from_single_file."""
    import torch
    from ldm_checkpoint import write_ldm_checkpoint

    from edgeq.models.weights import load_pipeline

    ckpt = write_ldm_checkpoint(tiny_models["sd15"], tmp_path / "model.safetensors")
    config_only = tmp_path / "config-only"
    shutil.copytree(tiny_models["sd15"], config_only, ignore=shutil.ignore_patterns("*.safetensors"))
    src = resolve("sd15", weights=ckpt, config_dir=config_only)
    assert src.kind == "single_file"
    pipe = load_pipeline(src)
    from diffusers import StableDiffusionPipeline

    ref = StableDiffusionPipeline.from_pretrained(tiny_models["sd15"], local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        got, want = getattr(pipe, name).state_dict(), getattr(ref, name).state_dict()
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), name


def test_missing_weights_names_every_place(tmp_path, capsys):
    r = cli("export", "sd15", "--out", str(tmp_path / "o"), env={"HF_HUB_CACHE": str(tmp_path / "empty")})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no weights found for 'sd15'" in r.stderr and "--weights" in r.stderr
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in r.stderr and str(tmp_path / "empty") in r.stderr
    assert not (tmp_path / "o").exists()


def test_wrong_path(tmp_path):
    r = cli("export", str(tmp_path / "nope"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "empty").mkdir()
    r = cli("export", str(tmp_path / "empty"))
    assert r.returncode == 2 and "model_index.json" in r.stderr


def test_unknown_preset_suggests():
    assert main(["export", "sd-15"]) == 2
    with pytest.raises(EdgeqError, match="did you mean 'sd15'"):
        resolve("sd-15")


def test_truncated_checkpoint(tiny_models, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_models["sd15"], damaged)
    f = damaged / "unet" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    out = tmp_path / "o"
    r = cli("export", str(damaged), "--out", str(out))
    assert r.returncode == 2 and "truncated" in r.stderr and str(f) in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".o.partial-*"))
    single = tmp_path / "one.safetensors"
    single.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    r = cli("export", "sd15", "--weights", str(single), "--config", str(tiny_models["sd15"]))
    assert r.returncode == 2 and "not a readable safetensors" in r.stderr
    ckpt = tmp_path / "one.ckpt"
    ckpt.write_bytes(b"PK\x03\x04 truncated zip")
    r = cli("export", "sd15", "--weights", str(ckpt), "--config", str(tiny_models["sd15"]))
    assert r.returncode == 2 and "not a readable PyTorch checkpoint" in r.stderr


def test_unwritable_output(tiny_models, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    r = cli("export", str(tiny_models["sd15"]), "--out", str(blocker / "build"))
    assert r.returncode == 2 and "is a file" in r.stderr and "Traceback" not in r.stderr


def test_interrupted_export_leaves_nothing(tiny_models, tmp_path, monkeypatch):
    """A failure mid-export removes the partial folder; the target never looks finished."""
    from edgeq.frontend import export as export_mod

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_mod, "write_manifest", boom)
    with pytest.raises(KeyboardInterrupt):
        export_mod.export(resolve(str(tiny_models["sd15"])), tmp_path / "o", log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []


def test_run_bad_input(tiny_exports, tmp_path):
    r = cli("run", str(tmp_path), "--prompt", "x")
    assert r.returncode == 2 and "manifest.json" in r.stderr
    r = cli("run", str(tiny_exports["sd15"]), "--prompt", "x", "-o", str(tmp_path / "x.jpg"))
    assert r.returncode == 2 and ".png" in r.stderr
    r = cli("run", str(tiny_exports["sd15"]), "--prompt", "x", "--height", "17")
    assert r.returncode == 2 and "multiple" in r.stderr


def test_damaged_build_is_detected(tiny_exports, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(tiny_exports["sd15"], copy)
    f = copy / "unet" / "model.onnx"
    f.write_bytes(f.read_bytes()[:-100])
    r = cli("run", str(copy), "--prompt", "x")
    assert r.returncode == 2 and "unet/model.onnx" in r.stderr and "truncated" in r.stderr


def test_models_and_targets_commands(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(p in out for p in ("sd15", "sd21", "sdxl", "tiny-sd"))
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert all(t in out for t in ("ort-cpu", "ort-mobile", "openvino", "tensorrt"))
