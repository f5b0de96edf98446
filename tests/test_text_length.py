"""The prompt token length comes from the model's own configs, not from a hard-coded 77.

A tiny random SD1.5-structured pipeline whose text encoder has 32 positions (a short, distilled
encoder) exports, builds and runs with 32-token prompts; a tokenizer longer than its encoder, or
two SDXL encoders of different lengths, are refused with one line that says why.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import cli

from edgeq.errors import EdgeqError
from edgeq.models.spec import text_sequence_length

SHORT = 32
LONG_PROMPT = "a large red cat on a small blue house in the background photo of a green dog " * 3


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from models import build_pipeline

    root = tmp_path_factory.mktemp("text-length")
    return {
        # tokenizer and encoder agree on 32
        "short": build_pipeline("sd15", root, max_position_embeddings=SHORT, model_max_length=SHORT, name="short"),
        # the tokenizer has no length of its own (transformers' sentinel): the encoder's 32 is taken
        "nolimit": build_pipeline("sd15", root, max_position_embeddings=SHORT, model_max_length=None, name="nolimit"),
        # a 77-token tokenizer in front of a 32-position encoder
        "mismatch": build_pipeline("sd15", root, max_position_embeddings=SHORT, model_max_length=77, name="mismatch"),
    }


def _main(*args: str) -> int:
    from edgeq.cli.main import main

    return main(list(args))


# -- the rule, on configs alone -----------------------------------------------------------------
def test_length_rule():
    te = {"text_encoder": {"max_position_embeddings": 77}}
    assert text_sequence_length("m", te, {"tokenizer": 77}) == 77
    assert text_sequence_length("m", te, {"tokenizer": 64}) == 64  # fewer tokens than positions is fine
    assert text_sequence_length("m", te, {"tokenizer": int(1e30)}) == 77  # "no limit": the encoder's
    assert text_sequence_length("m", {"text_encoder": {"max_position_embeddings": 248}}, {"tokenizer": 248}) == 248
    with pytest.raises(EdgeqError, match="makes prompts of 77 tokens .* only 32 positions"):
        text_sequence_length("m", {"text_encoder": {"max_position_embeddings": 32}}, {"tokenizer": 77})
    with pytest.raises(EdgeqError, match="no tokenizer"):
        text_sequence_length("m", te, {"tokenizer": None})
    with pytest.raises(EdgeqError, match="neither tokenizer"):
        text_sequence_length("m", {"text_encoder": {}}, {"tokenizer": int(1e30)})
    xl = {"text_encoder": {"max_position_embeddings": 77}, "text_encoder_2": {"max_position_embeddings": 77}}
    assert text_sequence_length("m", xl, {"tokenizer": 77, "tokenizer_2": 77}) == 77
    with pytest.raises(EdgeqError, match="text_encoder takes 77 tokens and text_encoder_2 takes 64 tokens"):
        text_sequence_length("m", xl, {"tokenizer": 77, "tokenizer_2": 64})


# -- (a) export ---------------------------------------------------------------------------------
def _check_export(folder):
    m = json.loads((folder / "manifest.json").read_text())
    assert m["pipeline"]["max_length"] == SHORT
    assert m["tokenizers"]["tokenizer"]["max_length"] == SHORT
    # what the runtime's tokenizer reads from the exported tokenizer config agrees
    from edgeq.runtime.tokenizer import tokenizer_settings

    assert tokenizer_settings(folder / "tokenizer")["max_length"] == SHORT
    assert json.loads((folder / "tokenizer/tokenizer_config.json").read_text())["model_max_length"] == SHORT
    # the text encoder runs on 32 ids and the UNet takes its 32-token hidden states
    import onnxruntime as ort

    te = ort.InferenceSession(str(folder / "text_encoder/model.onnx"), providers=["CPUExecutionProvider"])
    hidden = te.run(["last_hidden_state"], {"input_ids": np.zeros((2, SHORT), np.int32)})[0]
    assert hidden.shape[:2] == (2, SHORT)
    from edgeq.bench import feeds_for

    feeds = feeds_for(m, m["components"]["unet"])
    assert feeds["encoder_hidden_states"].shape[1] == SHORT
    return m


def test_export_takes_the_encoders_length(models, tmp_path):
    out = tmp_path / "fp32"
    assert _main("export", str(models["short"]), "--out", str(out)) == 0
    m = _check_export(out)
    assert all(v["max_rel"] <= v["tolerance"] for v in m["components"]["text_encoder"]["validation"])


def test_export_no_limit_tokenizer_takes_the_encoders_positions(models, tmp_path):
    out = tmp_path / "fp32"
    assert _main("export", str(models["nolimit"]), "--out", str(out), "--no-validate") == 0
    _check_export(out)


# -- (b) build, (c) run ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_build(models, tmp_path_factory):
    """`edgeq build --target ort-cpu` of the 32-token model, as small as the build allows (25 steps)."""
    root = tmp_path_factory.mktemp("text-length-build")
    (root / "calib.txt").write_text("a red cat\n" + LONG_PROMPT + "\n")
    (root / "held.txt").write_text("a small green house\n")
    out = root / "build"
    rc = _main(
        "build", "--target", "ort-cpu", str(models["short"]),
        "--num-calib", "2", "--num-heldout", "1", "--calib-calls", "25",
        "--calib-prompts", str(root / "calib.txt"), "--heldout-prompts", str(root / "held.txt"),
        "--groups", "1", "--group-mode", "shared",  # one graph: the length is what is tested here
        "--out", str(out), "--cache-dir", str(root / "cache"),
    )  # fmt: skip
    return rc, out


def test_build_takes_the_encoders_length(short_build):
    rc, out = short_build
    assert rc in (0, 3), rc  # 3: an accuracy gate failed, which random weights may do; the build is written
    m = json.loads((out / "manifest.json").read_text())
    assert m["pipeline"]["max_length"] == SHORT
    assert m["tokenizers"]["tokenizer"]["max_length"] == SHORT
    graph = onnx.load(str(out / "text_encoder/model.onnx"), load_external_data=False).graph
    assert graph.input[0].name == "input_ids"


def test_run_tokenizes_to_the_encoders_length(short_build, tmp_path, monkeypatch):
    from edgeq.runtime import tokenizer as tok_mod

    seen: list[np.ndarray] = []
    real = tok_mod.OnnxClipTokenizer.__call__

    def spy(self, texts):
        ids = real(self, texts)
        seen.append(ids)
        return ids

    monkeypatch.setattr(tok_mod.OnnxClipTokenizer, "__call__", spy)
    png = tmp_path / "out.png"
    assert _main("run", str(short_build[1]), "--prompt", LONG_PROMPT, "--steps", "3", "-o", str(png)) == 0
    from PIL import Image

    assert Image.open(png).size == (16, 16)  # the test model: 8x8 latents, VAE factor 2
    assert seen and all(ids.shape[1] == SHORT for ids in seen)
    eos = json.loads((short_build[1] / "manifest.json").read_text())["tokenizers"]["tokenizer"]["eos_id"]
    assert seen[0][1, -1] == eos  # the long prompt was truncated to 32, keeping its end token


# -- (d) refusals ------------------------------------------------------------------------------
def test_tokenizer_longer_than_encoder_is_refused(models, tmp_path):
    out = tmp_path / "fp32"
    r = cli("export", str(models["mismatch"]), "--out", str(out))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("edgeq export: error:")]
    assert len(errors) == 1, r.stderr
    assert "77 tokens" in errors[0] and "32 positions" in errors[0] and "max_position_embeddings" in errors[0]
    assert not out.exists()


def test_sdxl_encoders_of_different_lengths_are_refused(tmp_path):
    from models import build_pipeline

    from edgeq.frontend.export import export
    from edgeq.models.weights import resolve

    folder = build_pipeline("sdxl", tmp_path, model_max_length=77, model_max_length_2=64, name="xl")
    with pytest.raises(EdgeqError, match="text_encoder takes 77 tokens and text_encoder_2 takes 64 tokens"):
        export(resolve(str(folder)), tmp_path / "fp32", log=lambda *_: None)
    assert not (tmp_path / "fp32").exists()
