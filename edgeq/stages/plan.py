"""The quant plan: what was quantized, with which ranges and scales, and why each node was not.

``quant_plan.json`` in every build folder is exactly :meth:`QuantPlan.to_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


class _Record:
    """A frozen record whose dict form keeps its field order and leaves out unset optional fields."""

    OPTIONAL: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if f.name in self.OPTIONAL and v is None:
                continue
            out[f.name] = v.to_dict() if hasattr(v, "to_dict") else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})  # type: ignore[arg-type]


def _activation(rng: tuple[float, float], q: dict, t: str) -> dict[str, Any]:
    scale, zp = q.get(t, (None, None))
    return {"rmin": rng[0], "rmax": rng[1], "scale": scale, "zero_point": zp}


def node_lists(decisions) -> dict[str, list]:
    return {
        "quantized_nodes": [d.node for d in decisions if d.quantized],
        "excluded_nodes": [
            {"node": d.node, "op_type": d.op_type, "reason": d.reason} for d in decisions if not d.quantized
        ],
    }


@dataclass(frozen=True)
class ComponentPlan(_Record):
    """A component quantized as one group (the VAE decoder)."""

    component: str
    range_method: str
    policy: dict[str, Any]
    activations: dict[str, dict[str, Any]]  # tensor -> range, scale, zero point
    weights: list[dict[str, Any]]
    quantized_nodes: list[str]
    excluded_nodes: list[dict[str, str]]

    @classmethod
    def make(cls, name: str, method: str, policy: dict, ranges: dict, qparams: dict, weights: list, decisions):
        acts = {t: _activation(r, qparams, t) for t, r in ranges.items()}
        return cls(name, method, policy, acts, weights, **node_lists(decisions))


@dataclass(frozen=True)
class UnetPlan(_Record):
    """The UNet: shared and per-group ranges of every tensor, and every measured choice behind them."""

    OPTIONAL = ("gains",)

    component: str
    range_method: str
    policy: dict[str, Any]
    groups: list[dict[str, Any]]
    activations: dict[str, dict[str, Any]]  # tensor -> {"shared": ..., "per_group": [...]}
    weights: list[dict[str, Any]]
    float_macs: dict[str, Any]
    mixed_precision: dict[str, Any] | None
    splits: list[dict[str, Any]]
    smoothquant: dict[str, Any] | None
    range_choice: dict[str, Any] | None
    quantized_nodes: list[str]
    excluded_nodes: list[dict[str, str]]
    gains: dict[str, Any] | None = None  # the gains graph and its table, where one was built

    @staticmethod
    def activations_of(tensors, shared: dict, shared_q: dict, per_group: list[dict], group_q: list[dict]) -> dict:
        return {
            t: {
                "shared": _activation(shared[t], shared_q, t),
                "per_group": [_activation(per_group[g][t], group_q[g], t) for g in range(len(per_group))],
            }
            for t in tensors
        }


@dataclass(frozen=True)
class QuantPlan(_Record):
    target: str
    model: str
    group_mode: str
    unet: UnetPlan | None
    vae_decoder: ComponentPlan | None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantPlan:
        return cls(
            d["target"],
            d["model"],
            d["group_mode"],
            UnetPlan.from_dict(d["unet"]) if d.get("unet") else None,
            ComponentPlan.from_dict(d["vae_decoder"]) if d.get("vae_decoder") else None,
        )
