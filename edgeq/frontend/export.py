"""diffusers -> ONNX: export each component, validate it against torch, write a runnable FP32 build.

The folder follows optimum's ONNX Stable Diffusion layout (``text_encoder/``, ``unet/``,
``vae_decoder/``, ``vae_encoder/``, each with ``model.onnx`` and ``config.json``; ``tokenizer/``,
``scheduler/``, ``model_index.json``) and adds edgeq's ``tokenizer/tokenizer.onnx`` and
``manifest.json``. Graphs over 2 GB keep their weights in one ``model.onnx_data`` file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import EdgeqError
from edgeq.frontend import validate
from edgeq.frontend.validate import Validation
from edgeq.fsutil import staged_dir, write_json
from edgeq.manifest import MANIFEST, artifact_table, check_artifacts, library_versions, read_manifest, write_manifest
from edgeq.models.spec import TEXT_PAIRS, ComponentSpec, text_sequence_length
from edgeq.models.weights import WeightSource, load_pipeline
from edgeq.runtime.tokenizer import TOKENIZER_MODEL, build_tokenizer_model, tokenizer_settings

EXTERNAL_DATA = "model.onnx_data"
PROTOBUF_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class ExportSettings:
    """How to export. ``static`` fixes batch and image size; otherwise those axes are dynamic."""

    opset: int = 17
    static: bool = False
    batch: int = 2  # the classifier-free-guidance batch
    height: int | None = None  # image pixels; default: the model's resolution
    width: int | None = None
    validate: bool = True


@dataclass(frozen=True)
class ExportResult:
    """The stage-border object: a runnable FP32 build folder and how it was made."""

    folder: Path
    reused: bool
    validations: dict[str, list[Validation]]
    seconds: float


def cache_key(source: WeightSource, settings: ExportSettings) -> str:
    v = library_versions()
    blob = json.dumps(
        {
            "model": source.spec.name,
            "family": source.spec.family,
            "weights": source.fingerprint(),
            # the traced batch matters only to a static export: a dynamic one serves any batch (an SDXL
            # export at 1024 px was redone, 9 min, when only --guidance 0 changed it from 2 to 1)
            "settings": asdict(settings) if settings.static else {**asdict(settings), "batch": None},
            "versions": {k: v.get(k) for k in ("edgeq", "torch", "diffusers", "transformers", "onnx")},
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def export_isolated(
    source: WeightSource, out: Path, settings: ExportSettings = ExportSettings(), log=print
) -> ExportResult:
    """:func:`export` in a child process where there is something to export. torch, the model and
    the traced graphs stay resident after an in-process export: an SD1.5-shaped build held 12.2 GB
    while capturing after exporting in the same process, 8.9 GB with the export already done
    (2026-12-02). A reused export is checked here, without a child."""
    from edgeq.isolate import run_isolated

    reused = _reusable(source, out, settings, log)
    if reused is not None:
        return reused
    return run_isolated("the export", export, source, out, settings)


def _reusable(source: WeightSource, out: Path, settings: ExportSettings, log) -> ExportResult | None:
    t0 = time.time()
    key = cache_key(source, settings)
    if (out / MANIFEST).is_file():
        try:
            old = read_manifest(out)
            if old.get("cache_key") == key:
                check_artifacts(out, old)
                log(f"reusing the export in {out} (same model, settings and library versions)")
                vals = {
                    c: [Validation(**v) for v in info.get("validation", [])] for c, info in old["components"].items()
                }
                return ExportResult(out, True, vals, time.time() - t0)
        except EdgeqError as e:
            log(f"not reusing {out}: {e}")
    return None


def export(source: WeightSource, out: Path, settings: ExportSettings = ExportSettings(), log=print) -> ExportResult:
    """Export ``source`` to ``out``; reuse ``out`` when it already holds this exact export."""
    t0 = time.time()
    reused = _reusable(source, out, settings, log)
    if reused is not None:
        return reused
    key = cache_key(source, settings)
    pipe = load_pipeline(source)
    length = text_length(pipe, source)  # refuses a model edgeq cannot take before anything is written
    with staged_dir(out) as stage:
        vals = _export_pipeline(pipe, source, stage, settings, key, length, log)
    return ExportResult(out, False, vals, time.time() - t0)


def text_length(pipe, source: WeightSource) -> int:
    """The prompt token length the text encoder(s) and UNet are exported for, from the loaded model's
    own tokenizer(s) and text encoder config(s); see :func:`edgeq.models.spec.text_sequence_length`."""
    spec = source.spec
    for comp in spec.components:
        if getattr(pipe, comp.module, None) is None:
            raise EdgeqError(
                f"{spec.name} is a {spec.family} model but has no {comp.module}",
                "is the model folder complete, and of the family its configs name?",
            )
    text = {c.module for c in spec.components if c.module.startswith("text_encoder")}
    encoders = {enc: getattr(pipe, enc).config.to_dict() for enc, _ in TEXT_PAIRS if enc in text}
    tokenizers = {}
    for _, tok_name in TEXT_PAIRS:
        tok = getattr(pipe, tok_name, None)
        tokenizers[tok_name] = None if tok is None else int(getattr(tok, "model_max_length", None) or 2**62)
    return text_sequence_length(spec.name, encoders, tokenizers)


def _component_configs(pipe) -> dict[str, dict[str, Any]]:
    configs: dict[str, dict[str, Any]] = {}
    for name in ("unet", "vae"):
        configs[name] = dict(getattr(pipe, name).config)
    for name in ("text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is not None:
            configs[name] = getattr(pipe, name).config.to_dict()
    return configs


def _export_pipeline(
    pipe, source: WeightSource, stage: Path, settings: ExportSettings, key: str, length: int, log
) -> dict[str, list[Validation]]:
    import torch
    from tqdm import tqdm

    spec = source.spec
    configs = _component_configs(pipe)
    height = settings.height or spec.resolution
    width = settings.width or spec.resolution
    f = 2 ** (len(configs["vae"]["block_out_channels"]) - 1)
    if height % f or width % f:
        raise EdgeqError(
            f"image size {height}x{width} is not a multiple of the VAE factor {f}", "choose sizes divisible by it"
        )
    axes = {
        "batch": settings.batch,
        "image_batch": 1,
        "sequence": length,
        "height": height // f,
        "width": width // f,
        "image_height": height,
        "image_width": width,
    }
    components: dict[str, Any] = {}
    validations: dict[str, list[Validation]] = {}
    artifacts: list[str] = []
    index = {"_class_name": type(pipe).__name__, "_diffusers_version": library_versions().get("diffusers")}
    for name in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler"):
        if getattr(pipe, name, None) is not None:
            obj = getattr(pipe, name)
            index[name] = [type(obj).__module__.split(".")[0], type(obj).__name__]
    index["vae_encoder"] = ["diffusers", "AutoencoderKL"]
    index["vae_decoder"] = ["diffusers", "AutoencoderKL"]
    order = export_order(pipe, spec.components)
    for k, comp in enumerate(tqdm(order, desc="export", unit="graph")):
        torch.manual_seed(0)
        last_use = all(c.module != comp.module for c in order[k + 1 :])
        entry, vals, files = export_graph(pipe, comp, configs, axes, stage, settings, log, release_module=last_use)
        components[comp.name], validations[comp.name] = entry, vals
        artifacts += files
    components = {c.name: components[c.name] for c in spec.components}  # the manifest in the spec's order
    tokenizers = {}
    for tok_name in ("tokenizer", "tokenizer_2"):
        tok = getattr(pipe, tok_name, None)
        if tok is None:
            continue
        if tok.model_max_length != length:  # "no limit": the runtime reads the exported length from the config
            tok.model_max_length = length
        tok.save_pretrained(stage / tok_name)
        build_tokenizer_model(stage / tok_name, stage / tok_name / TOKENIZER_MODEL)
        artifacts.append(f"{tok_name}/{TOKENIZER_MODEL}")
        entry = {"path": f"{tok_name}/{TOKENIZER_MODEL}", **tokenizer_settings(stage / tok_name)}
        if entry["max_length"] != length:
            raise AssertionError(f"{tok_name}: the runtime would read {entry['max_length']} tokens, {length} exported")
        tokenizers[tok_name] = entry
    pipe.scheduler.save_pretrained(stage / "scheduler")
    write_json(stage / "model_index.json", index)
    vae_cfg = configs["vae"]
    write_manifest(
        stage,
        {
            "kind": "fp32",
            "target": None,
            "cache_key": key,
            "model": {
                "name": spec.name,
                "family": spec.family,
                "source": source.describe(),
                "fingerprint": source.fingerprint(),
            },
            "pipeline": {
                "resolution": [height, width],
                "scheduler": spec.scheduler,
                "steps": spec.steps,
                "guidance": spec.guidance,
                "prediction_type": pipe.scheduler.config.get("prediction_type", spec.prediction_type),
                "latent_channels": int(vae_cfg["latent_channels"]),
                "vae_scale_factor": f,
                "scaling_factor": float(vae_cfg.get("scaling_factor", 0.18215)),
                "shift_factor": vae_cfg.get("shift_factor"),
                "max_length": length,
                # an LCM UNet's guidance embedding width (its timestep_cond input); None: classic guidance
                "guidance_embedding_dim": configs["unet"].get("time_cond_proj_dim"),
                "force_zeros_for_empty_prompt": bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False)),
                "calibration_data": spec.calibration_data,
            },
            "shapes": {
                "static": settings.static,
                "axes": axes if settings.static else {k: "dynamic" for k in ("batch", "height", "width")},
            },
            "settings": asdict(settings),
            "components": components,
            "tokenizers": tokenizers,
            "scheduler_config": "scheduler/scheduler_config.json",
            "versions": library_versions(),
            "artifacts": artifact_table(stage, artifacts),
        },
    )
    return validations


def export_order(pipe, components) -> list[ComponentSpec]:
    """The components smallest module first, so that the largest (the UNet) is exported last, alone in
    memory: each module is released once its graphs are written (:func:`release`). At SDXL size the
    pipeline is 14 GB in FP32 and the UNet's export alone about twice its 10.3 GB."""
    sizes = {c.module: sum(p.numel() for p in getattr(pipe, c.module).parameters()) for c in components}
    return sorted(components, key=lambda c: sizes[c.module])  # stable: the VAE's encoder and decoder stay together


def release(pipe, module: str) -> None:
    """Drop ``pipe.<module>`` and give its memory back to the system: weights under glibc's mmap
    threshold (up to 32 MB once large blocks were freed) live on the C heap, which only a trim returns."""
    from edgeq.runtime.sessions import release_memory

    setattr(pipe, module, None)
    release_memory()


def export_graph(
    pipe,
    comp: ComponentSpec,
    configs: dict[str, dict[str, Any]],
    axes: dict[str, int],
    stage: Path,
    settings: ExportSettings,
    log=print,
    release_module: bool = False,
) -> tuple[dict[str, Any], list[Validation], list[str]]:
    """Export one component to ``stage/<name>/model.onnx`` and validate it against torch.
    ``release_module``: drop ``pipe.<module>`` once torch's reference outputs are computed, before the
    ONNX Runtime session is made (no later component needs it).

    Returns its manifest entry, the validation results and the files written.
    """
    module = _wrap(pipe, comp)
    rel = f"{comp.name}/model.onnx"
    (stage / comp.name).mkdir(parents=True, exist_ok=True)
    dummy = validate.random_inputs(comp, {t.name: t.resolve(configs, axes) for t in comp.inputs}, configs, seed=0)
    out_names = _output_names(comp, configs)
    t1 = time.time()
    _torch_export(module, comp, dummy, out_names, stage / rel, settings)
    graph_s = time.time() - t1
    files = [rel] + ([f"{comp.name}/{EXTERNAL_DATA}"] if (stage / comp.name / EXTERNAL_DATA).exists() else [])
    vals: list[Validation] = []
    if settings.validate:
        check_axes = dict(axes) if settings.static else {**axes, "batch": 1, "image_batch": 2, **_half_size(axes)}
        shapes_val = {t.name: t.resolve(configs, check_axes) for t in comp.inputs}
        feeds = validate.random_inputs(comp, shapes_val, configs, seed=1)
        ref = validate.torch_outputs(module, comp, feeds)
    del module
    if release_module:  # the ONNX Runtime session below and the torch module are each the model's size
        release(pipe, comp.module)
    if settings.validate:
        vals = validate.validate_graph(ref, comp, stage / rel, feeds, out_names)
        for v in vals:
            log(
                f"  {comp.name}.{v.output}: max abs err {v.max_abs:.2e}, rel {v.max_rel:.2e} "
                f"(tolerance {v.tolerance:.0e}) {'ok' if v.passed else 'FAILED'}"
            )
        bad = [v for v in vals if not v.passed]
        if bad:
            raise EdgeqError(
                f"{comp.name}: the ONNX graph disagrees with torch on {bad[0].output} "
                f"(relative error {bad[0].max_rel:.2e} > {bad[0].tolerance:.0e})",
                "try another --opset, or report the model and versions in `edgeq models`",
            )
    write_json(stage / comp.name / "config.json", configs["vae" if comp.module == "vae" else comp.module])
    entry = {
        "path": rel,
        "runtime": "onnxruntime",
        "precision": "fp32",
        "export_seconds": round(graph_s, 2),
        "inputs": [
            {"name": t.name, "dtype": t.dtype, "shape": list(t.resolve(configs, axes if settings.static else None))}
            for t in comp.inputs
        ],
        "outputs": out_names,
        "validation": [asdict(v) for v in vals],
    }
    return entry, vals, files


def _wrap(pipe, comp: ComponentSpec):
    """The torch module whose forward has exactly the component's ONNX inputs and outputs."""
    import torch

    module = getattr(pipe, comp.module)

    class TextEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = module

        def forward(self, input_ids):
            out = self.m(input_ids.to(torch.int64), output_hidden_states=comp.all_hidden_states)
            first = out.text_embeds if hasattr(out, "text_embeds") else None
            main = (first, out.last_hidden_state) if first is not None else (out.last_hidden_state, out.pooler_output)
            return (*main, *(out.hidden_states if comp.all_hidden_states else ()))

    class UNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = module

        def forward(self, sample, timestep, encoder_hidden_states, *rest):
            named = dict(zip([t.name for t in comp.inputs[3:]], rest))
            extra: dict[str, Any] = {}
            if "text_embeds" in named:
                extra["added_cond_kwargs"] = {"text_embeds": named["text_embeds"], "time_ids": named["time_ids"]}
            if "timestep_cond" in named:  # an LCM UNet's guidance-scale embedding
                extra["timestep_cond"] = named["timestep_cond"]
            return self.m(sample, timestep, encoder_hidden_states, return_dict=False, **extra)[0]

    class VaeDecoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = module

        def forward(self, latent_sample):
            return self.m.decode(latent_sample, return_dict=False)[0]

    class VaeEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = module

        def forward(self, sample):
            return self.m.encode(sample, return_dict=False)[0].parameters

    kinds = {"unet": UNet, "vae_decoder": VaeDecoder, "vae_encoder": VaeEncoder}
    return kinds.get(comp.name, TextEncoder)().eval()


def _half_size(axes: dict[str, int]) -> dict[str, int]:
    """A dynamic graph is checked at half the image size where the latents are 32 or more (and stay a
    multiple of 8, the UNet's downsampling): a size other than the traced one tests the dynamic axes
    too, and at a quarter of the area the checks of an SD1.5 VAE decoder and UNet cost 40 s less."""
    h, w = axes["height"], axes["width"]
    if h < 32 or w < 32 or (h // 2) % 8 or (w // 2) % 8:
        return {}
    f = axes["image_height"] // h
    return {"height": h // 2, "width": w // 2, "image_height": h // 2 * f, "image_width": w // 2 * f}


def _output_names(comp: ComponentSpec, configs: dict[str, dict[str, Any]]) -> list[str]:
    names = [t.name for t in comp.outputs]
    if comp.all_hidden_states:
        names += [f"hidden_states.{i}" for i in range(int(configs[comp.module]["num_hidden_layers"]) + 1)]
    return names


def _dynamic_axes(comp: ComponentSpec, out_names: list[str]) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for t in comp.inputs + comp.outputs:
        dyn = {i: d for i, d in enumerate(t.shape) if isinstance(d, str) and not d.startswith("{")}
        if dyn:
            axes[t.name] = dyn
    for n in out_names:
        if n.startswith("hidden_states."):
            axes[n] = {0: "batch", 1: "sequence"}
    return axes


def _torch_export(
    module,
    comp: ComponentSpec,
    dummy: dict[str, np.ndarray],
    out_names: list[str],
    path: Path,
    settings: ExportSettings,
) -> None:
    import onnx
    import torch

    args = tuple(torch.from_numpy(dummy[t.name]) for t in comp.inputs)
    scratch = Path(tempfile.mkdtemp(prefix="edgeq-export-", dir=path.parent.parent))
    try:
        raw = scratch / "model.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shape asserts in diffusers/transformers code
            torch.onnx.export(
                module,
                args,
                str(raw),
                input_names=[t.name for t in comp.inputs],
                output_names=out_names,
                dynamic_axes=None if settings.static else _dynamic_axes(comp, out_names),
                opset_version=settings.opset,
                do_constant_folding=True,
                dynamo=False,
            )
        extra_files = [p for p in scratch.iterdir() if p.name != "model.onnx"]
        if not extra_files and raw.stat().st_size < PROTOBUF_LIMIT:
            model = onnx.load(str(raw))
            _strip_wrapper_prefix(model.graph)
            onnx.save_model(model, str(path))
            return
        model = onnx.load(str(raw), load_external_data=False)  # the graph without its weights
        _strip_wrapper_prefix(model.graph)
        gather_external_data(model, scratch, path, EXTERNAL_DATA)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def gather_external_data(model, src_dir: Path, path: Path, location: str, inline_below: int = 1024) -> None:
    """Save ``model`` (loaded without its external data, which lies in files under ``src_dir``, one per
    tensor as torch.onnx writes a graph over 2 GB) at ``path`` with all its weights in one file
    ``location`` beside it, copied a tensor at a time: never the whole model in memory, where
    ``onnx.load`` + ``onnx.save_model`` held it twice (the SDXL UNet is 10.3 GB). Tensors under
    ``inline_below`` bytes go into the graph file, as ``onnx.save_model``'s ``size_threshold`` does."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    align = 4096  # page-aligned offsets: ONNX Runtime can map the file
    data = path.with_name(location)
    with open(data, "wb") as out:
        for tensor in _get_all_tensors(model):  # initializers and tensor attributes, subgraphs included
            if not uses_external_data(tensor):
                continue
            info = ExternalDataInfo(tensor)
            with open(src_dir / info.location, "rb") as f:
                f.seek(info.offset or 0)
                blob = f.read(info.length) if info.length else f.read()
            del tensor.external_data[:]
            if len(blob) < inline_below:
                tensor.data_location = onnx.TensorProto.DEFAULT
                tensor.raw_data = blob
                continue
            pad = -out.tell() % align
            out.write(b"\0" * pad)
            offset = out.tell()
            out.write(blob)
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(blob)))):
                tensor.external_data.add(key=key, value=value)
            tensor.data_location = onnx.TensorProto.EXTERNAL
            del blob
    onnx.save_model(model, str(path))


def _strip_wrapper_prefix(graph) -> None:
    """Names as in diffusers' module tree (``/conv_in/Conv``), without the export wrapper's ``/m``.

    A name is shortened only where the shorter one is free, so names stay unique.
    """

    def mapping(names: list[str]) -> dict[str, str]:
        taken = set(names)
        out = {}
        for n in names:
            if n.startswith("/m/") and n[2:] not in taken:
                out[n] = n[2:]
                taken.add(n[2:])
        return out

    nodes = mapping([n.name for n in graph.node])
    values = mapping([v for n in graph.node for v in (*n.input, *n.output)] + [i.name for i in graph.initializer])
    for n in graph.node:
        n.name = nodes.get(n.name, n.name)
        n.input[:] = [values.get(i, i) for i in n.input]
        n.output[:] = [values.get(o, o) for o in n.output]
    for coll in (graph.initializer, graph.value_info):
        for v in coll:
            v.name = values.get(v.name, v.name)
