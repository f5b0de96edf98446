"""Range method per tensor class, chosen by measurement (``range_method = "auto"``).

Hand-written: calibrators pick one method for every tensor (ORT: min-max, percentile, entropy;
TensorRT: entropy or percentile). Activations of a diffusion UNet differ by where they come from: a
SiLU output has a hard floor and a long positive tail, a LayerNorm output is near-Gaussian with a
few outlier channels, an attention output is narrow. So the tensors are put in classes (which
quantized op reads them, and what produced them), and each class gets the method among min-max,
percentile and MSE-optimal clipping that gives the best worst-group UNet SQNR in the switchable
fake-quant simulation (:mod:`edgeq.quantize.sensitivity`), one class at a time, the others held at
the profile's method. Every method's ranges come from the same merged timestep-group histograms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import onnx

from edgeq.quantize.policy import Decision

CANDIDATES = ("minmax", "percentile", "mse")
_LAYOUT = ("Reshape", "Transpose", "Cast", "Squeeze", "Unsqueeze", "Flatten")


def tensor_classes(graph: onnx.GraphProto, tensors: list[str], decisions: list[Decision]) -> dict[str, str]:
    """``"<reader op> input from <producer>"``, or ``"<op> output"`` for a quantized op's own output."""
    prod = {o: n for n in graph.node for o in n.output}
    quantized = {d.node for d in decisions if d.quantized}
    readers: dict[str, set[str]] = {}
    for n in graph.node:
        if n.name in quantized:
            for x in n.input:
                readers.setdefault(x, set()).add(n.op_type)
    out = {}
    for t in tensors:
        p = prod.get(t)
        if p is not None and p.name in quantized:
            out[t] = f"{p.op_type} output"
            continue
        if t not in readers:
            continue  # no quantized op reads it in this graph (a split Conv's former Concat): nothing to choose
        while p is not None and p.op_type in _LAYOUT:
            p = prod.get(p.input[0])
        if p is None:
            src = "graph input"
        elif p.op_type == "Mul" and any(prod.get(x) is not None and prod[x].op_type == "Sigmoid" for x in p.input):
            src = "SiLU"
        elif p.op_type == "Mul":
            src = "gated product (GEGLU)"
        elif p.op_type == "MatMul" and p.name not in quantized:
            src = "attention (float MatMul)"
        else:
            src = p.op_type
        reader = "/".join(sorted(readers[t]))
        out[t] = f"{reader} input from {src}"
    return out


@dataclass
class RangeChoice:
    default: str
    winners: dict[str, str]  # class -> method
    measured: dict[str, dict[str, float]]  # class -> method -> worst-group SQNR (dB), others at default
    tensors: dict[str, int]  # class -> how many tensors
    baseline_db: float = 0.0  # every class at the default
    final_db: float = 0.0  # every class at its winner
    calls: int = 0
    classes: dict[str, str] = field(default_factory=dict)  # tensor -> class

    def method_of(self, t: str) -> str:
        return self.winners.get(self.classes.get(t, ""), self.default)

    def to_dict(self) -> dict:
        return {
            "default": self.default,
            "winners": self.winners,
            "measured_worst_db": self.measured,
            "tensors_per_class": self.tensors,
            "baseline_worst_db": self.baseline_db,
            "final_worst_db": self.final_db,
            "calls": self.calls,
            "classes": self.classes,
        }

    @classmethod
    def from_dict(cls, d: dict) -> RangeChoice:
        return cls(
            d["default"],
            d["winners"],
            d["measured_worst_db"],
            d["tensors_per_class"],
            d["baseline_worst_db"],
            d["final_worst_db"],
            d["calls"],
            d["classes"],
        )


def choose(
    classes: dict[str, str],
    ranges_by_method: dict[str, dict[str, tuple[float, float]]],
    worst_db: Callable[[dict[str, tuple[float, float]]], float],
    default: str,
    log=print,
) -> RangeChoice:
    """Per class, the method whose ranges give the best worst-group SQNR (``worst_db(ranges)``).

    Coordinate ascent: classes in turn (largest first), each tried with every candidate while the
    others keep their current choice; a class keeps the default unless another method measures
    better, so the final mix is never below the all-default baseline.
    """
    names = sorted(set(classes.values()), key=lambda c: (-sum(1 for k in classes.values() if k == c), c))
    current = dict(ranges_by_method[default])
    best = base = worst_db(current)
    measured: dict[str, dict[str, float]] = {}
    winners: dict[str, str] = {}
    for c in names:
        members = [t for t, k in classes.items() if k == c]
        row = {default: best}
        for m in ranges_by_method:
            if m != default:
                row[m] = worst_db({**current, **{t: ranges_by_method[m][t] for t in members}})
        measured[c] = {m: round(float(v), 3) for m, v in row.items()}
        winners[c] = max(row, key=lambda m: (row[m], m == default))
        best = row[winners[c]]
        current.update({t: ranges_by_method[winners[c]][t] for t in members})
        log(f"range method for {c} ({len(members)} tensors): {winners[c]} ({best:.2f} dB)")
    count = {c: sum(1 for k in classes.values() if k == c) for c in names}
    return RangeChoice(default, winners, measured, count, round(float(base), 3), round(float(best), 3), 0, classes)


__all__ = ["CANDIDATES", "RangeChoice", "choose", "tensor_classes"]
