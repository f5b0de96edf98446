"""Convert a diffusers Stable Diffusion 1.x pipeline folder into an original (CompVis/LDM "v1-inference") checkpoint.

The output is a single ``.safetensors`` file with the key layout that ``diffusers.loaders.single_file_utils``
(``convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint`` / ``convert_ldm_clip_checkpoint``) reads back:

* ``model.diffusion_model.*``                      UNet (input_blocks / middle_block / output_blocks layout)
* ``first_stage_model.*``                          VAE (encoder.down.N.block.M / decoder.up.N.block.M layout)
* ``cond_stage_model.transformer.text_model.*``    CLIP text encoder (HF CLIPTextModel keys under ``text_model.``)

The UNet layout is derived from the diffusers config and keys, so any number of down/up blocks, any
``layers_per_block`` and any mix of CrossAttn/plain blocks work. Used by tests to exercise single-file loading.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["write_ldm_checkpoint"]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

# diffusers ResnetBlock2D (UNet) -> LDM ResBlock sub-module names
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}

# top-level UNet modules
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}

# top-level VAE modules
_VAE_TOP = {
    "encoder.conv_in": "encoder.conv_in",
    "encoder.conv_out": "encoder.conv_out",
    "encoder.conv_norm_out": "encoder.norm_out",
    "decoder.conv_in": "decoder.conv_in",
    "decoder.conv_out": "decoder.conv_out",
    "decoder.conv_norm_out": "decoder.norm_out",
    "quant_conv": "quant_conv",
    "post_quant_conv": "post_quant_conv",
}

# diffusers VAE mid-block Attention -> LDM AttnBlock
_VAE_ATTN = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
    # deprecated diffusers attention names, still found in old saved folders
    "query": "q",
    "key": "k",
    "value": "v",
    "proj_attn": "proj_out",
}


def _split(key: str) -> tuple[str, str]:
    """'a.b.c.weight' -> ('a.b.c', 'weight')."""
    module, _, leaf = key.rpartition(".")
    return module, leaf


# ----------------------------------------------------------------------------------------------------- loading


def _load_folder_state_dict(folder: Path, stem: str) -> dict | None:
    """State dict stored in ``folder`` as ``{stem}.safetensors`` (or its sharded index), else None."""
    from safetensors.torch import load_file

    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict = {}
        for shard in shards:
            out.update(load_file(str(folder / shard)))
        return out
    return None


def _component_state_dict(pipeline_dir: Path, name: str) -> dict:
    folder = pipeline_dir / name
    stem = "model" if name == "text_encoder" else "diffusion_pytorch_model"
    sd = _load_folder_state_dict(folder, stem)
    if sd is not None:
        return sd
    # fall back to the library loader (e.g. .bin weights)
    if name == "unet":
        from diffusers import UNet2DConditionModel as cls
    elif name == "vae":
        from diffusers import AutoencoderKL as cls
    else:
        from transformers import CLIPTextModel as cls
    return cls.from_pretrained(str(folder)).state_dict()


def _config(pipeline_dir: Path, name: str) -> dict:
    return json.loads((pipeline_dir / name / "config.json").read_text())


# ----------------------------------------------------------------------------------------------------- UNet


def _unet_layers_per_block(config: dict) -> int:
    lpb = config.get("layers_per_block", 2)
    if isinstance(lpb, (list, tuple)):
        if len(set(lpb)) != 1:
            raise ValueError(f"per-block layers_per_block {lpb} has no LDM v1 equivalent")
        lpb = lpb[0]
    return int(lpb)


def _convert_unet(sd: dict, config: dict) -> dict:
    L = _unet_layers_per_block(config)
    # up blocks that carry attentions: their upsampler sits at index 2 of the last output block, else at 1
    up_with_attn = {int(m.group(1)) for k in sd if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    out: dict = {}

    def resnet(rest: str) -> str:
        module, leaf = _split(rest)
        if module not in _UNET_RESNET:
            raise KeyError(f"unexpected UNet resnet parameter {rest!r}")
        return f"{_UNET_RESNET[module]}.{leaf}"

    for key, value in sd.items():
        module, leaf = _split(key)
        if module in _UNET_TOP:
            new = f"{_UNET_TOP[module]}.{leaf}"
        elif key == "class_embedding.weight":
            new = "label_emb.weight"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            b, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            if j >= L:
                raise ValueError(f"{key}: more resnets than layers_per_block={L}")
            new = f"input_blocks.{1 + b * (L + 1) + j}.0.{resnet(rest)}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            b, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            new = f"input_blocks.{1 + b * (L + 1) + j}.1.{rest}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            b = int(m.group(1))
            new = f"input_blocks.{1 + b * (L + 1) + L}.0.op.{m.group(2)}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            j = int(m.group(1))
            new = f"middle_block.{2 * j}.{resnet(m.group(2))}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m.group(1)}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            b, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            if j > L:
                raise ValueError(f"{key}: more up resnets than layers_per_block+1={L + 1}")
            new = f"output_blocks.{b * (L + 1) + j}.0.{resnet(rest)}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            b, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            new = f"output_blocks.{b * (L + 1) + j}.1.{rest}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            b = int(m.group(1))
            slot = 2 if b in up_with_attn else 1
            new = f"output_blocks.{b * (L + 1) + L}.{slot}.conv.{m.group(2)}"
        else:
            raise KeyError(f"UNet parameter {key!r} has no LDM v1 equivalent")
        if new in out:
            raise ValueError(f"two UNet parameters map to {new!r}")
        out[new] = value
    return out


# ----------------------------------------------------------------------------------------------------- VAE


def _convert_vae(sd: dict, config: dict) -> dict:
    n_up = len(config["up_block_types"])
    out: dict = {}
    for key, value in sd.items():
        module, leaf = _split(key)
        if module in _VAE_TOP:
            new = f"{_VAE_TOP[module]}.{leaf}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"encoder.down.{m.group(1)}.block.{m.group(2)}.{m.group(3).replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            new = f"encoder.down.{m.group(1)}.downsample.conv.{m.group(2)}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            i = n_up - 1 - int(m.group(1))
            new = f"decoder.up.{i}.block.{m.group(2)}.{m.group(3).replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            i = n_up - 1 - int(m.group(1))
            new = f"decoder.up.{i}.upsample.conv.{m.group(2)}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.{m.group(3).replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
            part, sub, leaf = m.groups()
            if sub not in _VAE_ATTN:
                raise KeyError(f"unexpected VAE attention parameter {key!r}")
            new = f"{part}.mid.attn_1.{_VAE_ATTN[sub]}.{leaf}"
            if sub != "group_norm" and leaf == "weight" and value.ndim == 2:
                value = value.reshape(*value.shape, 1, 1)  # linear -> 1x1 conv
        else:
            raise KeyError(f"VAE parameter {key!r} has no LDM v1 equivalent")
        if new in out:
            raise ValueError(f"two VAE parameters map to {new!r}")
        out[new] = value
    return out


# ----------------------------------------------------------------------------------------------------- CLIP


def _convert_clip(sd: dict) -> dict:
    out: dict = {}
    for key, value in sd.items():
        if key.endswith("position_ids"):  # buffer, not a parameter
            continue
        rest = key.removeprefix("text_model.")
        out[f"text_model.{rest}"] = value
    return out


# ----------------------------------------------------------------------------------------------------- public


def write_ldm_checkpoint(pipeline_dir: Path, out_file: Path) -> Path:
    """Write ``pipeline_dir`` (diffusers SD1.x layout) as an LDM v1 single-file ``.safetensors`` at ``out_file``."""
    import torch
    from safetensors.torch import save_file

    pipeline_dir, out_file = Path(pipeline_dir), Path(out_file)
    parts = (
        (UNET_PREFIX, _convert_unet(_component_state_dict(pipeline_dir, "unet"), _config(pipeline_dir, "unet"))),
        (VAE_PREFIX, _convert_vae(_component_state_dict(pipeline_dir, "vae"), _config(pipeline_dir, "vae"))),
        (CLIP_PREFIX, _convert_clip(_component_state_dict(pipeline_dir, "text_encoder"))),
    )
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for prefix, sd in parts:
        for key, value in sd.items():
            t = value.detach().cpu().contiguous()
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen and t.numel():  # safetensors refuses shared storage
                t = t.clone()
            seen.add(t.untyped_storage().data_ptr())
            tensors[prefix + key] = t
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_file), metadata={"format": "pt"})
    return out_file
