"""Q/DQ placement: which nodes of a graph are quantized, which stay float, and why.

Every candidate node (an op type the profile names) gets a decision with a reason; the decisions
are written into the quant plan and, as a readable summary, compared with golden files in tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from edgeq.profiles import ComponentPolicy


@dataclass(frozen=True)
class Decision:
    node: str
    op_type: str
    quantized: bool
    reason: str


def constant_names(
    graph: onnx.GraphProto, through: tuple[str, ...] = ("Transpose", "Cast", "Identity", "Reshape")
) -> set[str]:
    """Initializers and outputs of Constant nodes, and of ``through`` ops whose inputs are all
    constant (a weight's layout and type changes), in any node order (ONNX Runtime's quantizer
    appends its Q/DQ nodes after their readers)."""
    const = {i.name for i in graph.initializer}
    grew = True
    while grew:
        grew = False
        for n in graph.node:
            if (
                n.output
                and n.output[0] not in const
                and (
                    n.op_type == "Constant"
                    or (n.op_type in through and n.input and all(i in const for i in n.input if i))
                )
            ):
                const.update(n.output)
                grew = True
    return const


def decide(graph: onnx.GraphProto, policy: ComponentPolicy) -> list[Decision]:
    """A decision for every node whose op type the policy names, in graph order."""
    const = constant_names(graph)
    out = []
    for n in graph.node:
        if n.op_type not in policy.op_types:
            continue
        if policy.mode != "int8":
            out.append(Decision(n.name, n.op_type, False, policy.reason or "component kept float by the profile"))
            continue
        excl = policy.excluded_by(n.name)
        if excl:
            out.append(Decision(n.name, n.op_type, False, excl.reason))
            continue
        if n.op_type in policy.float_op_types:
            out.append(Decision(n.name, n.op_type, False, policy.float_reason))
            continue
        weight = n.input[1] if len(n.input) > 1 else ""
        if n.op_type in ("MatMul", "Gemm") and weight not in const:
            if policy.activation_matmul != "int8":
                out.append(
                    Decision(
                        n.name,
                        n.op_type,
                        False,
                        "MatMul of two activations (attention scores or values): activation_matmul = float",
                    )
                )
                continue
            why = "MatMul of two activations (attention scores or values): activation_matmul = int8"
            out.append(
                Decision(
                    n.name, n.op_type, True, why + (f" ({policy.flavour_reason})" if policy.flavour_reason else "")
                )
            )
            continue
        elif weight not in const:
            out.append(Decision(n.name, n.op_type, False, "weight is not a constant"))
            continue
        out.append(Decision(n.name, n.op_type, True, f"{n.op_type} with a constant weight"))
    return out


def tensors_to_calibrate(
    graph: onnx.GraphProto, decisions: list[Decision], policy: ComponentPolicy | None = None
) -> list[str]:
    """Float activations read or written by quantized nodes: the tensors that need ranges.

    With ``split_concat_convs``, also the inputs of the Concat a quantized Conv reads: shortcut
    splitting chooses from their ranges (edgeq.quantize.split).
    """
    const = constant_names(graph)
    chosen = {d.node for d in decisions if d.quantized}
    halves: dict[str, tuple[str, ...]] = {}
    if policy is not None and policy.split_concat_convs:
        from edgeq.quantize.split import concat_convs

        halves = concat_convs(graph, decisions)
    names: list[str] = []
    seen: set[str] = set()
    for n in graph.node:
        if n.name not in chosen:
            continue
        acts = [n.input[0]] + ([n.input[1]] if n.op_type in ("MatMul",) and n.input[1] not in const else [])
        acts += list(halves.get(n.name, ()))
        for t in acts + list(n.output[:1]):
            if t and t not in const and t not in seen:
                seen.add(t)
                names.append(t)
    return names


def summary(decisions: list[Decision]) -> str:
    """One line per candidate node: the golden-file format."""
    return (
        "\n".join(f"{d.node}\t{d.op_type}\t{'int8' if d.quantized else 'float'}\t{d.reason}" for d in decisions) + "\n"
    )
