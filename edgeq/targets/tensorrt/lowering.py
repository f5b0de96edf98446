"""The graph TensorRT builds: float ops in FP16 (TensorRT 11 builds strongly typed networks only)."""

from __future__ import annotations

import re
from pathlib import Path

from edgeq.fsutil import save_onnx
from edgeq.targets.tensorrt.options import TrtOptions


def to_trt_onnx(src: Path, dst: Path, opts: TrtOptions) -> None:
    """Write ``src`` as the strongly typed graph TensorRT builds: float ops in FP16, I/O in FP32.

    ONNX Runtime's float16 converter does the conversion (Q/DQ scales become FP16 too, valid from
    opset 19, so DequantizeLinear feeds an FP16 conv directly). Two mendings: the timestep path
    up to the sinusoidal projection is kept FP32 (the converter would round the timestep to FP16
    on the graph input and cast it back), and the nodes are sorted topologically again.
    """
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src), load_external_data=True)
    if opts.float_precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        keep = _fp32_nodes(model.graph, opts.keep_fp32)
        model = convert_float_to_float16(model, keep_io_types=True, node_block_list=sorted(keep))
        _bypass_input_round_trips(model.graph)
        om = OnnxModel(model)
        om.remove_unused_constant()
        om.prune_graph()
        om.topological_sort()
        model = om.model
    model.producer_name = "edgeq"
    save_onnx(model, dst)


def _fp32_nodes(graph, patterns: tuple[str, ...]) -> set[str]:
    """Nodes matching ``patterns`` and every node they depend on (the timestep broadcast)."""
    prod = {o: n for n in graph.node for o in n.output}
    stack = [n for n in graph.node if any(re.search(p, n.name) for p in patterns)]
    keep: set[str] = set()
    while stack:
        n = stack.pop()
        if n.name in keep:
            continue
        keep.add(n.name)
        stack += [prod[i] for i in n.input if i in prod]
    return keep


def _bypass_input_round_trips(graph) -> None:
    """Cast(FP32 input -> FP16) -> Cast(-> FP32): let the FP32 consumers read the input itself."""
    import onnx

    inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    prod = {o: n for n in graph.node for o in n.output}

    def cast_to(n) -> int | None:
        return next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" else None

    replace = {}
    for n in graph.node:
        if cast_to(n) == onnx.TensorProto.FLOAT and n.input[0] in prod:
            p = prod[n.input[0]]
            if cast_to(p) == onnx.TensorProto.FLOAT16 and p.input[0] in inputs:
                replace[n.output[0]] = p.input[0]
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name in replace:
                n.input[i] = replace[name]
