"""Finding model weights offline, and loading them with diffusers.

Order: ``--weights PATH`` (a diffusers folder, or a single-file ``.safetensors``/``.ckpt``
checkpoint), then the local Hugging Face cache for the preset's repositories, then weights bundled
with edgeq (tiny-sd). Nothing is ever downloaded. torch and diffusers are imported only when a
model is actually loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq.errors import EdgeqError
from edgeq.models.presets import PRESETS, get_preset, spec_from_configs
from edgeq.models.spec import ModelSpec

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
PROVIDE_HINT = (
    "give a diffusers folder or a .safetensors/.ckpt file with --weights PATH, "
    "or put the repository in the Hugging Face cache (HF_HOME / HF_HUB_CACHE)"
)


@dataclass(frozen=True)
class WeightSource:
    """Where a model's weights were found."""

    spec: ModelSpec
    kind: str  # folder | single_file | hf_cache | embedded
    path: Path
    config_dir: Path | None = None  # for single files: the diffusers folder that gives the configs

    def describe(self) -> str:
        return f"{self.kind}: {self.path}"

    def fingerprint(self) -> str:
        """Identifies the weights: config contents, and each weight file's name, size and mtime."""
        h = hashlib.sha256()
        roots = [self.path] + ([self.config_dir] if self.config_dir else [])
        for root in roots:
            files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
            for f in files:
                st = f.stat()
                h.update(str(f.relative_to(root) if root.is_dir() else f.name).encode())
                if f.suffix in (".json", ".txt"):
                    h.update(f.read_bytes())
                else:
                    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()


def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def find_in_hf_cache(repo_id: str) -> Path | None:
    """The newest local snapshot of ``repo_id`` that holds a pipeline, without network access."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        return None
    return path if (path / "model_index.json").is_file() else None


def read_configs(folder: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """model_index.json and each component's config (scheduler included) from a diffusers folder."""
    index_path = folder / "model_index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EdgeqError(f"cannot read {index_path}: {e}", "is this a diffusers pipeline folder?") from None
    configs: dict[str, dict[str, Any]] = {}
    for comp in index:
        if comp.startswith("_"):
            continue
        for name in ("config.json", "scheduler_config.json"):
            p = folder / comp / name
            if p.is_file():
                try:
                    configs[comp] = json.loads(p.read_text())
                except json.JSONDecodeError as e:
                    raise EdgeqError(f"{p} is not valid JSON: {e}", "the model folder looks damaged") from None
    return index, configs


def _looks_like_path(model: str) -> bool:
    return os.sep in model or model.startswith(".") or Path(model).exists() or model.endswith(SINGLE_FILE_SUFFIXES)


def _from_path(path: Path, spec: ModelSpec | None, config_dir: Path | None, what: str) -> WeightSource:
    if not path.exists():
        raise EdgeqError(f"{what} {path} does not exist", PROVIDE_HINT)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise EdgeqError(
                f"{path} has no model_index.json, so it is not a diffusers pipeline folder",
                "point at the folder that holds model_index.json, or at a single .safetensors/.ckpt file",
            )
        index, configs = read_configs(path)
        if spec is None:
            spec = spec_from_configs(str(path), index, configs)
        return WeightSource(spec, "folder", path.resolve())
    if path.suffix not in SINGLE_FILE_SUFFIXES:
        raise EdgeqError(
            f"{path} is neither a diffusers folder nor a checkpoint ({', '.join(SINGLE_FILE_SUFFIXES)})", PROVIDE_HINT
        )
    if spec is None:
        raise EdgeqError(
            f"{path} is a single-file checkpoint, which carries no config to read the model family from",
            f"name the preset and pass the file as weights: edgeq export sd15 --weights {path}",
        )
    config_dir = config_dir or _single_file_config_dir(spec)
    return WeightSource(spec, "single_file", path.resolve(), config_dir)


def _single_file_config_dir(spec: ModelSpec) -> Path:
    """A single file has weights but no configs or tokenizer: take those from a diffusers folder."""
    looked = []
    if spec.embedded:
        return PACKAGE_ROOT / spec.embedded
    for repo in spec.repo_ids:
        found = find_in_hf_cache(repo)
        looked.append(f"Hugging Face cache {hf_cache_dir()} for {repo}")
        if found:
            return found
    raise EdgeqError(
        f"a single-file {spec.name} checkpoint needs the model's configs and tokenizer, and none were found "
        f"(looked in: {'; '.join(looked) or 'nowhere'})",
        "pass --config DIR with a diffusers folder of the same model (configs and tokenizer, weights not needed)",
    )


def resolve(model: str, weights: Path | None = None, config_dir: Path | None = None) -> WeightSource:
    """Find the weights for ``model`` (a preset name or a path) without touching the network."""
    if _looks_like_path(model) and model not in PRESETS:
        if weights is not None:
            raise EdgeqError(f"both a model path ({model}) and --weights were given", "give one of them")
        return _from_path(Path(model), None, config_dir, "model path")
    spec = get_preset(model)
    if weights is not None:
        return _from_path(Path(weights), spec, config_dir, "--weights path")
    looked = ["--weights (not given)"]
    for repo in spec.repo_ids:
        found = find_in_hf_cache(repo)
        looked.append(f"Hugging Face cache {hf_cache_dir()} for {repo}")
        if found:
            return WeightSource(spec, "hf_cache", found)
    if spec.embedded:
        path = PACKAGE_ROOT / spec.embedded
        looked.append(f"bundled weights {path}")
        if (path / "model_index.json").is_file():
            return WeightSource(spec, "embedded", path)
    raise EdgeqError(f"no weights found for '{model}' (looked in: {'; '.join(looked)})", PROVIDE_HINT)


def load_pipeline(source: WeightSource):
    """Load the diffusers pipeline in float32 on the CPU. Damaged files become user errors."""
    import torch
    from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()

    sdxl = source.spec.family == "sdxl"
    extra = {} if sdxl else {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    try:
        if source.kind == "single_file":
            cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
            _check_single_file(source.path)
            pipe = cls.from_single_file(
                str(source.path), config=str(source.config_dir), local_files_only=True, dtype=torch.float32, **extra
            )
        else:
            _check_folder_files(source.path)
            pipe = DiffusionPipeline.from_pretrained(source.path, local_files_only=True, dtype=torch.float32, **extra)
    except EdgeqError:
        raise
    except Exception as e:  # diffusers/transformers/safetensors raise many types for damaged input
        raise EdgeqError(
            f"could not load the model from {source.path}: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
            "is the download complete and the folder a Stable Diffusion pipeline?",
        ) from None
    for m in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(pipe, m, None) is not None:
            getattr(pipe, m).eval()
    return pipe


def _check_safetensors(path: Path) -> None:
    """Open the header and check every tensor's byte range lies inside the file."""
    import struct

    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(n))
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise EdgeqError(
            f"{path} is not a readable safetensors file ({e})",
            "the file is damaged or incomplete: download or copy it again",
        ) from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise EdgeqError(
            f"{path} is truncated: its header needs {8 + n + end} bytes, the file has {size}",
            "download or copy it again",
        )


def _check_single_file(path: Path) -> None:
    if path.suffix == ".safetensors":
        _check_safetensors(path)
    else:
        import zipfile

        if not zipfile.is_zipfile(path):
            raise EdgeqError(
                f"{path} is not a readable PyTorch checkpoint (not a complete zip archive)",
                "the file is damaged or incomplete: download or copy it again",
            )


def _check_folder_files(folder: Path) -> None:
    for p in sorted(folder.rglob("*.safetensors")):
        _check_safetensors(p)
