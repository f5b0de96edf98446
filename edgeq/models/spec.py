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
    if key not in cfg:
        raise EdgeqError(f"the {comp} config has no '{key}'", "is this a Stable Diffusion model of a supported family?")
    v = cfg[key]
    return int(v[-1] if isinstance(v, (list, tuple)) else v)


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
    scheduler: str  # ddim | euler | dpmpp_2m
    steps: int
    guidance: float
    prediction_type: str  # epsilon | v_prediction
    latent_channels: int = 4
    vae_scale_factor: int = 8
    max_length: int = 77
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
