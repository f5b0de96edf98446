"""An exported graph against its torch module: random inputs, ONNX Runtime against torch, per output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeq.models.spec import ComponentSpec


@dataclass(frozen=True)
class Validation:
    output: str
    max_abs: float
    max_rel: float  # max |onnx - torch| / max |torch|
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.max_rel) and self.max_rel <= self.tolerance)


def random_inputs(comp: ComponentSpec, shapes: dict[str, tuple], configs, seed: int) -> dict[str, np.ndarray]:
    """Random inputs of a component's graph, with the value ranges its real inputs take."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for t in comp.inputs:
        shape = shapes[t.name]
        if t.name == "input_ids":
            vocab = int(configs[comp.module]["vocab_size"])
            out[t.name] = rng.integers(0, vocab, shape).astype(np.int32)
        elif t.name == "timestep":
            out[t.name] = np.array(rng.uniform(0, 999), np.float32)
        elif t.name == "time_ids":
            out[t.name] = np.tile(np.array([[1024, 1024, 0, 0, 1024, 1024]], np.float32), (shape[0], 1))
        else:
            out[t.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def torch_outputs(module, comp: ComponentSpec, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The torch module's outputs on ``feeds``, as numpy arrays (computed before the ONNX Runtime
    session exists, so that the two copies of a large model are never in memory together)."""
    import torch

    with torch.no_grad():
        ref = module(*[torch.from_numpy(feeds[t.name]) for t in comp.inputs])
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    return [r.numpy() for r in ref]


def validate_graph(
    ref: list[np.ndarray], comp: ComponentSpec, path: Path, feeds: dict[str, np.ndarray], out_names: list[str]
) -> list[Validation]:
    """ONNX Runtime against torch's outputs ``ref`` (:func:`torch_outputs`) on ``feeds``: each
    output's max absolute and relative error."""
    from edgeq.runtime.sessions import OrtRunner

    out = OrtRunner(path).run(feeds)
    got = [out[n] for n in out_names]
    vals = []
    for name, g, r in zip(out_names, got, ref):
        max_abs = float(np.abs(g - r).max())
        vals.append(Validation(name, max_abs, max_abs / max(float(np.abs(r).max()), 1e-12), comp.atol))
    return vals
