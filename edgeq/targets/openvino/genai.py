"""OpenVINO GenAI's folder contract, written into an openvino build where GenAI can run it.

``openvino_genai.Text2ImagePipeline(folder, device)`` (and ``Image2ImagePipeline`` where a VAE
encoder is present) reads the layout optimum-intel writes: ``model_index.json`` naming ``vae``, each
component as ``<component>/openvino_model.xml`` beside its ``config.json``, the tokenizer as
``tokenizer/openvino_tokenizer.xml`` and ``openvino_detokenizer.xml`` (converted by
``openvino_tokenizers``), a scheduler class it implements, and a UNet whose ``timestep`` is an
int64 tensor of shape [1]. What edgeq adds to meet it, and nothing else:

- the UNet IR's ``timestep`` parameter becomes int64 [1], converted to the float scalar the graph
  was exported with (edgeq's runtime feeds the same folder: its OpenVINO runner casts the feed to
  the port's type, rounding the timestep as GenAI does);
- the text encoder's ``input_ids`` become int64 the same way;
- the tokenizer IRs, from the build's own Hugging Face tokenizer files;
- ``"vae"`` in ``model_index.json``, and the FP32 VAE encoder as IR (image-to-image, inpainting);
- the scheduler config names the class edgeq's pipeline runs by default (same betas and spacing),
  where GenAI implements it, so that both denoise alike.

GenAI cannot feed what per-group graphs or the gains input need (it runs one UNet graph with
three inputs), so those builds are not GenAI folders and the manifest says why; with
``genai = "on"`` they get one in ``genai/`` whose UNet is the shared-range graph.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeq.fsutil import write_json

# GenAI 2026.4's schedulers (src/cpp/src/image_generation/schedulers/types.cpp; no DPM-Solver++)
GENAI_SCHEDULERS = frozenset(
    {
        "DDIMScheduler",
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "LCMScheduler",
        "PNDMScheduler",
        "FlowMatchEulerDiscreteScheduler",
    }
)
DIFFUSERS_CLASS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "lcm": "LCMScheduler"}  # GenAI has these
MODEL_FILE = "openvino_model.xml"
SUBFOLDER = "genai"  # genai = "on": where a per-group or gains build puts the GenAI folder
# inputs GenAI feeds as int64 (with the shape it gives them; None: the graph's own)
INT64_INPUTS: dict[str, dict[str, list[int] | None]] = {
    "text_encoder": {"input_ids": None},
    "unet": {"timestep": [1]},
}


def blocker(mode: str, export_manifest: dict[str, Any], scheduler_class: str, option: str = "auto") -> str | None:
    """Why this build is not also a GenAI folder (None: it is one)."""
    import importlib.util

    if option == "off":
        return '[openvino] genai = "off" in the profile'
    if mode != "shared":
        what = "one UNet graph per timestep group" if mode == "per-group" else "per-group scales through a gains input"
        return (
            f"group mode '{mode}' deploys {what}, which GenAI's pipeline cannot feed (it runs one UNet graph with "
            "sample, timestep and text inputs); build with --group-mode shared for a GenAI folder"
        )
    family = export_manifest["model"].get("family")
    if family not in ("sd15", "sd21"):
        return f"GenAI folders are written for SD1.x/2.x pipelines; this is a {family} pipeline (not checked yet)"
    for mod, pkg in (("openvino_tokenizers", "openvino-tokenizers"), ("transformers", "transformers")):
        if importlib.util.find_spec(mod) is None:
            return f"{pkg} is not installed (it converts the tokenizer): pip install 'edgeq[openvino]'"
    default = export_manifest["pipeline"]["scheduler"]
    if default not in DIFFUSERS_CLASS and scheduler_class not in GENAI_SCHEDULERS:
        return f"neither edgeq's scheduler '{default}' nor the model's {scheduler_class} is one GenAI implements"
    return None


def status(why_not: str | None) -> dict[str, Any]:
    """The manifest's ``genai`` entry."""
    if why_not is not None:
        return {"ready": False, "reason": why_not}
    return {
        "ready": True,
        "pipelines": ["Text2ImagePipeline", "Image2ImagePipeline"],
        "usage": "openvino_genai.Text2ImagePipeline(BUILD_FOLDER, 'CPU').generate(prompt, width=..., height=...)",
    }


def status_subfolder(why_not_here: str, sub: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``genai`` entry of a per-group or gains build with a GenAI folder in ``genai/``."""
    return {
        **sub,
        "folder": SUBFOLDER,
        "usage": sub["usage"].replace("BUILD_FOLDER", f"BUILD_FOLDER/{SUBFOLDER}"),
        "reason": f"the build folder itself is not one: {why_not_here}",
        "unet": "the shared-range graph (one set of scales for every timestep): its accuracy is the report's "
        "'shared' variant, not this build's mode",
    }


def retyped_inputs(inputs: list[dict[str, Any]], retype: dict[str, list[int] | None]) -> list[dict[str, Any]]:
    """The manifest's input entries after :func:`int64_input`."""
    out = []
    for i in inputs:
        if i["name"] in retype:
            shape = retype[i["name"]]
            i = {**i, "dtype": "int64", **({"shape": shape} if shape is not None else {})}
        out.append(i)
    return out


def int64_input(model, name: str, shape: list[int] | None = None) -> None:
    """Make input ``name`` an int64 parameter (of ``shape``, or its own) feeding the graph's original
    type and rank through a Convert (in place): GenAI feeds int64 timesteps [1] and token ids."""
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    old = next(p for p in model.get_parameters() if name in p.output(0).get_names())
    pshape = ov.PartialShape(shape) if shape is not None else old.get_partial_shape()
    if old.get_element_type() == ov.Type.i64 and old.get_partial_shape() == pshape:
        return
    new = ops.parameter(pshape, ov.Type.i64, name=name)
    value = ops.convert(new, old.get_element_type())
    if shape is not None and old.get_partial_shape().rank.get_length() == 0:
        value = ops.squeeze(value, ops.constant(np.array([0], np.int64)))
    for target in list(old.output(0).get_target_inputs()):
        target.replace_source_output(value.output(0))
    old.output(0).set_names(set())
    new.output(0).set_names({name})
    model.replace_parameter(model.get_parameter_index(old), new)
    model.validate_nodes_and_infer_types()


def write_extras(stage: Path, export_manifest: dict[str, Any]) -> list[Path]:
    """Tokenizer IRs, ``vae`` in ``model_index.json``, and a scheduler config naming the class edgeq's
    pipeline runs (where GenAI implements it), so that GenAI and edgeq's runtime denoise alike."""
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer
    from transformers import CLIPTokenizer

    files: list[Path] = []
    for tok in export_manifest["tokenizers"].values():
        folder = stage / Path(tok["path"]).parent
        models = convert_tokenizer(CLIPTokenizer.from_pretrained(folder), with_detokenizer=True)
        for model, name in zip(models, ("openvino_tokenizer.xml", "openvino_detokenizer.xml")):
            ov.save_model(model, str(folder / name))
            files += [folder / name, folder / name.replace(".xml", ".bin")]
    index_path = stage / "model_index.json"
    index = json.loads(index_path.read_text())
    index.setdefault("vae", ["diffusers", "AutoencoderKL"])
    write_json(index_path, index)
    cls = DIFFUSERS_CLASS.get(export_manifest["pipeline"]["scheduler"])
    if cls is not None:
        sched_path = stage / export_manifest["scheduler_config"]
        sched = json.loads(sched_path.read_text())
        if sched.get("_class_name") != cls:
            sched["_class_name"] = cls  # same betas and spacing; the class edgeq's pipeline defaults to
            write_json(sched_path, sched)
    return files
