"""SmoothQuant for the linear layers that read a LayerNorm: outliers moved from activations to weights.

A transformer block's LayerNorm output has a few channels far larger than the rest, so one per-tensor
activation scale wastes most int8 steps on them. SmoothQuant (Xiao et al., 2023) divides channel j
of the activation by ``s_j = max|x_j|^alpha / max|W_j|^(1 - alpha)`` and multiplies row j of every
reading linear layer's weight by it. Here the division is folded into the LayerNorm's own scale and
bias (``gamma / s``, ``beta / s``), so no runtime op is added: the smoothed graph computes the same
function with the same ops. Sites: LayerNormalization nodes whose readers (Shape aside) are all
MatMuls with constant 2-D weights that the policy quantizes: attention q/k/v (norm1), the
cross-attention query (norm2), the feed-forward input (norm3).

Hand-written: ONNX Runtime and NNCF implement SmoothQuant inside their own quantizers, not as a
transform of an ONNX graph that another quantizer (here ORT's ``QDQQuantizer``) then consumes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgeq.fsutil import save_onnx
from edgeq.quantize.policy import Decision


@dataclass(frozen=True)
class Site:
    norm: str  # the LayerNormalization node
    tensor: str  # its output, the smoothed activation
    gamma: str
    beta: str | None
    matmuls: tuple[str, ...]
    weights: tuple[str, ...]


def sites(graph: onnx.GraphProto, decisions: list[Decision]) -> list[Site]:
    """LayerNorms whose every non-Shape reader is a quantized MatMul with a 2-D initializer weight."""
    inits = {i.name: i for i in graph.initializer}
    chosen = {d.node for d in decisions if d.quantized}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    out = []
    for n in graph.node:
        if n.op_type != "LayerNormalization" or len(n.input) < 2 or n.input[1] not in inits:
            continue
        rs = [r for r in readers.get(n.output[0], []) if r.op_type != "Shape"]
        ok = rs and all(
            r.op_type == "MatMul"
            and r.name in chosen
            and r.input[0] == n.output[0]
            and r.input[1] in inits
            and len(inits[r.input[1]].dims) == 2
            for r in rs
        )
        beta = n.input[2] if len(n.input) > 2 and n.input[2] else None
        if ok and (beta is None or beta in inits):
            out.append(
                Site(n.name, n.output[0], n.input[1], beta, tuple(r.name for r in rs), tuple(r.input[1] for r in rs))
            )
    return out


def channel_absmax(
    model_path: Path, tensors: list[str], feeds: Iterable[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |x| of each tensor over the given inputs."""
    from edgeq.calibrate.collect import augmented_session

    sess = augmented_session(Path(model_path), tensors)
    names = {i.name for i in sess.get_inputs()}
    out: dict[str, np.ndarray] = {}
    for f in feeds:
        for t, v in zip(tensors, sess.run(tensors, {k: x for k, x in f.items() if k in names})):
            m = np.abs(v).reshape(-1, v.shape[-1]).max(axis=0)
            out[t] = m if t not in out else np.maximum(out[t], m)
    return out


def smooth_scales(act_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-channel factors, kept finite for dead channels."""
    a = np.maximum(act_max.astype(np.float64), 1e-5)
    w = np.maximum(w_max.astype(np.float64), 1e-5)
    return np.clip(a**alpha / w ** (1 - alpha), 1e-4, 1e4)


def smooth_model(model: onnx.ModelProto, found: list[Site], act_max: dict[str, np.ndarray], alpha: float) -> dict:
    """Fold SmoothQuant into ``model`` (weights loaded) in place; returns per-site factor ranges."""
    inits = {i.name: i for i in model.graph.initializer}
    report = {}
    for s in found:
        ws = [numpy_helper.to_array(inits[w]) for w in s.weights]
        w_max = np.max(np.stack([np.abs(w).max(axis=1) for w in ws]), axis=0)
        f = smooth_scales(act_max[s.tensor], w_max, alpha)
        for name, w in zip(s.weights, ws):
            inits[name].CopyFrom(numpy_helper.from_array((w * f[:, None]).astype(w.dtype), name))
        for name in (s.gamma, s.beta):
            if name is not None:
                v = numpy_helper.to_array(inits[name])
                inits[name].CopyFrom(numpy_helper.from_array((v / f).astype(v.dtype), name))
        report[s.norm] = {"min": float(f.min()), "max": float(f.max())}
    return report


def write_smoothed(fp32_path: Path, found: list[Site], act_max: dict[str, np.ndarray], alpha: float, dst: Path) -> dict:
    """The smoothed copy of ``fp32_path`` at ``dst`` (weights in one external file beside it)."""
    model = onnx.load(str(fp32_path), load_external_data=True)
    shared = _shared_initializers(model, found)  # would be scaled for one reader and wrong for the others
    if shared:
        raise RuntimeError(f"initializers read by more than one node cannot be smoothed in place: {shared[:3]}")
    report = smooth_model(model, found, act_max, alpha)
    save_onnx(model, dst)
    return report


def _shared_initializers(model: onnx.ModelProto, found: list[Site]) -> list[str]:
    count: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            count[i] = count.get(i, 0) + 1
    names = [x for s in found for x in (s.gamma, s.beta, *s.weights) if x]
    return [x for x in names if count.get(x, 0) > 1]
