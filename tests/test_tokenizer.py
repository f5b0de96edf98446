"""The ONNX CLIP tokenizer gives transformers' CLIPTokenizer ids exactly."""

from __future__ import annotations

import numpy as np
import pytest

from edgeq.runtime.tokenizer import OnnxClipTokenizer, build_tokenizer_model, tokenizer_settings

TEXTS = [
    "",
    "a small red circle at the top left on a blue background",
    "a photo of a cat " * 30,  # far past 77 tokens
    "Hello, World!!! (really?) -- yes; it's 'quoted' & #tagged @here",
    "85mm f/1.8 lens, 1960s, 123,456.7 and 3.14",
    "Héllo wörld: naïve café in Zürich, São Paulo, Kraków",
    "日本語のテキスト と 中文 和 한국어",
    "emoji 🙂🚀 and symbols ²½ → ©",
    "tabs\tand\nnewlines   and   runs of spaces  ",
    "UPPER Case MiXeD",
    "background" * 40,
]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from transformers import CLIPTokenizer

    from edgeq.models.bpe import write_tokenizer

    d = tmp_path_factory.mktemp("tok")
    write_tokenizer(d, "a photo of the cat red blue small circle top left on background hello world".split())
    build_tokenizer_model(d, d / "tokenizer.onnx")
    return OnnxClipTokenizer(d / "tokenizer.onnx", **tokenizer_settings(d)), CLIPTokenizer.from_pretrained(d)


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_transformers(tokenizers, text):
    ours, ref = tokenizers
    want = ref([text], padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
    got = ours([text])
    assert got.dtype == np.int32 and got.shape == (1, 77)
    np.testing.assert_array_equal(got, want)


def test_batch(tokenizers):
    ours, ref = tokenizers
    want = ref(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
    np.testing.assert_array_equal(ours(TEXTS), want)
