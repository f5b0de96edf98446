"""What a model is: its components, their ONNX inputs and outputs, and its sampling defaults.

Shapes are written with symbolic axis names ("batch", "height", ...) and config placeholders
("{unet.in_channels}"), resolved against the loaded model's own configs at export time. Input and
output names follow optimum's ONNX Stable Diffusion export so exported folders stay familiar.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeq.errors import EdgeqError


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[str | int, ...]  # ints, axis names (dynamic) or "{component.key}" placeholders

    def resolve(self, configs: dict[str, dict[str, Any]], axes: dict[str, int] | None = None) -> tuple[int | str, ...]:
        """Concrete shape: placeholders from ``configs``; axis names from ``axes`` when given."""
        out: list[int | str] = []
        for d in self.shape:
            if isinstance(d, str) and d.startswith("{"):
                comp, key = d.strip("{}").split(".", 1)
                out.append(_config_value(configs, comp, key))
            elif isinstance(d, str) and axes is not None and d in axes:
                out.append(axes[d])
            else:
                out.append(d)
        return tuple(out)


def _config_value(configs: dict[str, dict[str, Any]], comp: str, key: str) -> int:
    cfg = configs.get(comp, {})
    if key == "pooled_dim":
        return int(configs["text_encoder_2"].get("projection_dim") or configs["text_encoder_2"]["hidden_size"])
    if key == "time_ids_dim":
        return 6
    if key == "latent_channels2":
        return 2 * int(configs["vae"]["latent_channels"])
    if cfg.get(key) is None:
        if key == "time_cond_proj_dim":
            raise EdgeqError(
                "the preset is a latent consistency model, but this UNet has no guidance embedding "
                "(its config has no time_cond_proj_dim)",
                "give the model folder without a preset name, so edgeq reads its kind from the configs",
            )
        raise EdgeqError(f"the {comp} config has no '{key}'", "is this a Stable Diffusion model of a supported family?")
    v = cfg[key]
    return int(v[-1] if isinstance(v, (list, tuple)) else v)


# transformers gives a tokenizer without a length of its own a huge "no limit" sentinel (1e30)
NO_LIMIT = 1024
# each text encoder with the tokenizer that feeds it (SDXL has two pairs)
TEXT_PAIRS = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))


def text_sequence_length(model: str, encoders: dict[str, dict[str, Any]], tokenizers: dict[str, int | None]) -> int:
    """The token sequence length the text encoder(s) are exported for, from the model's own configs.

    ``encoders``: text encoder name -> its config; ``tokenizers``: tokenizer name -> its
    ``model_max_length`` (``None`` where the pipeline has no such tokenizer). Each tokenizer pads and
    truncates prompts to its own length, which must fit its encoder's ``max_position_embeddings``; a
    tokenizer without a length (transformers' "no limit" sentinel) takes its encoder's. SDXL
    concatenates both encoders' hidden states token by token, so both pairs must come to one length.
    A model edgeq cannot take is refused with an :class:`EdgeqError` that says why.
    """
    lengths: dict[str, int] = {}
    for enc, tok in TEXT_PAIRS:
        if enc not in encoders:
            continue
        cfg = encoders[enc] or {}
        given = tokenizers.get(tok)
        if given is None:
            raise EdgeqError(
                f"{model} has a {enc} but no {tok} to feed it",
                f"add the {enc}'s tokenizer folder ({tok}/) to the model",
            )
        tok_len = int(given)
        raw = cfg.get("max_position_embeddings")
        positions = int(raw) if raw is not None else None
        if tok_len > NO_LIMIT:
            if positions is None:
                raise EdgeqError(
                    f"{model}: neither {tok} (no model_max_length) nor {enc} (no max_position_embeddings) "
                    "says how many tokens a prompt has",
                    f"set model_max_length in {tok}/tokenizer_config.json",
                )
            tok_len = positions
        elif positions is not None and tok_len > positions:
            raise EdgeqError(
                f"{model}: {tok} makes prompts of {tok_len} tokens (model_max_length) but {enc} has only "
                f"{positions} positions (max_position_embeddings)",
                f"set model_max_length in {tok}/tokenizer_config.json to at most {positions}, "
                f"or use the tokenizer that belongs to this {enc}",
            )
        if tok_len < 2:
            raise EdgeqError(
                f"{model}: {tok} makes prompts of {tok_len} tokens (model_max_length); a prompt needs at least "
                "its start and end tokens",
                f"set model_max_length in {tok}/tokenizer_config.json to the {enc}'s length",
            )
        lengths[enc] = tok_len
    if not lengths:
        raise EdgeqError(
            f"{model} has no text encoder", "edgeq handles text-to-image pipelines with a CLIP text encoder"
        )
    if len(set(lengths.values())) > 1:
        said = " and ".join(f"{enc} takes {n} tokens" for enc, n in lengths.items())
        raise EdgeqError(
            f"{model}: {said}; the UNet reads both encoders' hidden states joined token by token, "
            "so they must take the same length",
            "set the same model_max_length in tokenizer/ and tokenizer_2/tokenizer_config.json",
        )
    return next(iter(lengths.values()))


@dataclass(frozen=True)
class ComponentSpec:
    """One exported graph: folder name, which diffusers module it comes from, and its IO."""

    name: str  # folder in the build: text_encoder, text_encoder_2, unet, vae_encoder, vae_decoder
    module: str  # attribute of the diffusers pipeline
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    atol: float = 1e-3  # validation tolerance on max |onnx - torch|, relative to max |torch|
    all_hidden_states: bool = False  # also export hidden_states.N (SDXL reads the penultimate)


@dataclass(frozen=True)
class ModelSpec:
    """A model preset: what edgeq knows about a family and where its weights usually live."""

    name: str
    description: str
    family: str  # sd15 | sd21 | sdxl
    repo_ids: tuple[str, ...]  # Hugging Face repositories searched in the local cache
    components: tuple[ComponentSpec, ...]
    resolution: int
    scheduler: str  # ddim | euler | dpmpp_2m | lcm
    steps: int
    guidance: float
    prediction_type: str  # epsilon | v_prediction
    latent_channels: int = 4
    vae_scale_factor: int = 8
    embedded: str | None = None  # package-relative folder with bundled weights
    calibration_data: str = "sd15"  # folder in calibration_data/
    # build defaults, sized so a CPU-only machine finishes a build in about half an hour: the FP32
    # UNet at full size costs seconds per call, and capture runs it for every step of every prompt
    num_calib: int = 2  # calibration prompts
    num_heldout: int = 1  # held-out prompts for the checks
    calib_calls: int | None = 32  # captured UNet calls the statistics use (None: all)

    def component(self, name: str) -> ComponentSpec:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(name)
