"""The CLIP tokenizer as an ONNX model (onnxruntime-extensions' CLIPTokenizer op).

``onnxruntime_extensions.gen_processing_models`` fails with transformers 5, so the op graph is
built directly from the tokenizer's ``vocab.json`` and ``merges.txt``. The op adds the start and
end tokens; truncation to ``max_length`` (keeping the end token) and padding are done here, the
way transformers' ``CLIPTokenizer(padding="max_length", truncation=True)`` does them. One
difference is mended before the op: CLIP's pre-tokenizer makes every numeric character a word of its own
(``[\\p{N}]``), the op keeps runs together, so they are spaced apart first; and
whitespace runs (tabs, newlines) are collapsed as CLIP's ``whitespace_clean`` does.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np

from edgeq.errors import EdgeqError

TOKENIZER_MODEL = "tokenizer.onnx"


def _clip_pretokenize(text: str) -> str:
    """Numeric characters (Unicode category N) apart, whitespace runs collapsed, as CLIP does."""
    spaced = "".join(f" {c} " if unicodedata.category(c)[0] == "N" else c for c in text)
    return " ".join(spaced.split())


def ensure_vocab_merges(tokenizer_dir: Path) -> None:
    """transformers 5 saves only ``tokenizer.json``: write CLIP's ``vocab.json``/``merges.txt`` from it."""
    if (tokenizer_dir / "vocab.json").is_file() and (tokenizer_dir / "merges.txt").is_file():
        return
    fast = tokenizer_dir / "tokenizer.json"
    if not fast.is_file():
        raise EdgeqError(
            f"{tokenizer_dir} has neither vocab.json/merges.txt nor tokenizer.json",
            "the model's tokenizer folder is incomplete",
        )
    model = json.loads(fast.read_text(encoding="utf-8"))["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (tokenizer_dir / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def build_tokenizer_model(tokenizer_dir: Path, out_path: Path) -> None:
    """Write the tokenizer ONNX model for a transformers CLIP tokenizer folder."""
    import onnx
    from onnxruntime_extensions._cuops import SingleOpGraph

    ensure_vocab_merges(tokenizer_dir)
    vocab = (tokenizer_dir / "vocab.json").read_text(encoding="utf-8")
    merges = (tokenizer_dir / "merges.txt").read_text(encoding="utf-8")
    graph = SingleOpGraph.build_graph("CLIPTokenizer", vocab=vocab, merges=merges, padding_length=-1)
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("ai.onnx.contrib", 1)]
    )
    model.producer_name = "edgeq"
    onnx.save(model, out_path)


def tokenizer_settings(tokenizer_dir: Path) -> dict[str, int]:
    """max_length and the pad / end token ids, from the transformers tokenizer files."""
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    cfg_path = tokenizer_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    special_path = tokenizer_dir / "special_tokens_map.json"
    special = json.loads(special_path.read_text()) if special_path.is_file() else {}

    def token(key: str, default: str) -> str:
        v = special.get(key) or cfg.get(key) or default
        return v["content"] if isinstance(v, dict) else v

    max_length = int(cfg.get("model_max_length", 77))
    if max_length > 1024:  # transformers' "no limit" sentinel
        max_length = 77
    return {
        "max_length": max_length,
        "pad_id": int(vocab[token("pad_token", "<|endoftext|>")]),
        "eos_id": int(vocab[token("eos_token", "<|endoftext|>")]),
    }


def extensions_library() -> str:
    """Path of onnxruntime-extensions' custom-op library, found without importing the package
    (its ``__init__`` imports transformers, and so torch, whenever they are installed)."""
    import glob
    import importlib.util

    spec = importlib.util.find_spec("onnxruntime_extensions")
    if spec is None or not spec.submodule_search_locations:
        raise EdgeqError(
            "onnxruntime-extensions is not installed; the tokenizer model needs it",
            "pip install onnxruntime-extensions",
        )
    for folder in spec.submodule_search_locations:
        found = sorted(
            glob.glob(f"{folder}/_extensions_pydll*.so")
            + glob.glob(f"{folder}/_extensions_pydll*.pyd")
            + glob.glob(f"{folder}/_extensions_pydll*.dylib")
        )
        if found:
            return found[0]
    raise EdgeqError(
        "onnxruntime-extensions has no custom-op library in its package folder",
        "reinstall it: pip install --force-reinstall onnxruntime-extensions",
    )


class OnnxClipTokenizer:
    """Token ids, int32 ``[batch, max_length]``, from the tokenizer ONNX model."""

    def __init__(self, model_path: Path, max_length: int, pad_id: int, eos_id: int):
        import onnxruntime as ort

        if not model_path.is_file():
            raise EdgeqError(f"tokenizer model {model_path} is missing", "re-run `edgeq export` for this build")
        opts = ort.SessionOptions()
        opts.register_custom_ops_library(extensions_library())
        self.session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        self.max_length, self.pad_id, self.eos_id = max_length, pad_id, eos_id

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.full((len(texts), self.max_length), self.pad_id, np.int32)
        for i, text in enumerate(texts):
            text = _clip_pretokenize(text)
            ids = self.session.run(["input_ids"], {"input_text": np.array([text])})[0][0]
            if len(ids) > self.max_length:
                ids = np.concatenate([ids[: self.max_length - 1], [self.eos_id]])
            out[i, : len(ids)] = ids
        return out
