#!/usr/bin/env python
"""Why an activation flavour is accurate or not in OpenVINO (issue 18, part 1), on trained tiny-sd.

For each flavour (symmetric int8 or asymmetric uint8 activations into the UNet's convolutions, with
8-bit or 7-bit weights), edgeq quantizes tiny-sd's UNet (its own stages, shared mode) and this
script then measures, per timestep group on held-out UNet calls:

* ``exact``: the Q/DQ graph's own arithmetic (ONNX Runtime, graph optimisation off) against FP32;
* ``openvino``: OpenVINO's CPU plugin (f32 hint) on the same graph against FP32, in a fresh process
  for the host's instruction set and for each lower ``ONEDNN_MAX_CPU_ISA`` cap that selects another
  int8 code path (``AVX512_CORE``: no VNNI, ``AVX2``);
* ``gap``: exact minus openvino, what the runtime loses.

It also reads what OpenVINO made of the graph: the FakeQuantize nodes on activations (levels, signed
or not, zero point), the form of the weights, and the precision each compute layer runs in (the
compiled model's runtime graph). NNCF's own INT8 model of the same UNet (``nncf.quantize``,
transformer model type, the same calibration calls) is read the same way, for comparison.

OpenVINO's CPU plugin takes signed int8 activations into Convolution only on AMX and AVX2-VNNI-2
CPUs (``transformation_pipeline.cpp``: ``input0LowPrecisionList``); elsewhere the low-precision
transformations shift a signed FakeQuantize to uint8 with a zero point of 128, which the
Convolution node folds in as an input zero point: per tensor through oneDNN on AVX512-VNNI / AMX /
AVX2-VNNI-2, per channel with a precomputed compensation ("legacy" zero points) elsewhere.

Writes ``benchmarks/openvino_flavours_<cpu family>.{md,json}``.

    python tools/probe_openvino_flavours.py [--num-heldout 8] [--no-nncf]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeq.verify.metrics import sqnr_db  # noqa: E402

FLAVOURS = {  # name: (activation type, symmetric, --cpu family for the weight bits)
    "s8-sym w8": ("int8", True, "x86-vnni"),
    "s8-sym w7": ("int8", True, "portable"),
    "u8-asym w8": ("uint8", False, "x86-vnni"),
    "u8-asym w7": ("uint8", False, "portable"),
}


def profile_for(act_type: str, symmetric: bool, folder: Path) -> Path:
    """A profile extending ``openvino``: the UNet's convolutions only, with this activation flavour."""
    name = f"probe-{act_type}-{'sym' if symmetric else 'asym'}"
    path = folder / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\ndescription = "probe: {act_type} activations into Conv"\nextends = "openvino"\n'
        f'[unet]\nop_types = ["Conv"]\nactivation_type = "{act_type}"\n'
        f"activation_symmetric = {str(symmetric).lower()}\n"
        # the same flavour on x86-vnni, whose by_family entry in openvino.toml would replace it
        f'[unet.by_family.x86-vnni]\nactivation_type = "{act_type}"\n'
        f'activation_symmetric = {str(symmetric).lower()}\nactivation_matmul = "float"\n'
        'flavour_reason = "probe: the flavour under test on every family"\n'
    )
    return path


def host_caps() -> list[str | None]:
    """None (the host's own ISA) and each cap below it that selects another int8 path."""
    from edgeq.runtime.cpu import detect

    flags = set(detect().flags)
    caps: list[str | None] = [None]
    if "amx_int8" in flags:
        caps.append("AVX512_CORE_VNNI")
    if {"avx512_vnni", "amx_int8"} & flags:
        caps.append("AVX512_CORE")
    if "avx512f" in flags:
        caps.append("AVX2")
    return caps


def per_group(values: list[float], group_of: list[int], n_groups: int) -> list[float]:
    return [round(float(np.mean([v for v, g in zip(values, group_of) if g == k])), 2) for k in range(n_groups)]


def _openvino_outputs(model: str, calls: str, out: str) -> None:
    """Child process: OpenVINO (f32 hint) on every call of ``calls``; writes outputs and layer precisions."""
    import openvino as ov

    z = np.load(calls)
    core = ov.Core()
    cm = core.compile_model(core.read_model(model), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    outs = {}
    for k in sorted({f.split(".")[0] for f in z.files}):
        feeds = {f.split(".in.")[1]: z[f] for f in z.files if f.startswith(f"{k}.in.")}
        outs[k] = next(iter(cm(feeds).values()))
    np.savez(out, **outs)
    Path(out + ".json").write_text(json.dumps(runtime_summary(cm)))


def runtime_summary(cm) -> dict:
    """Compute layers by runtime precision, and the eltwise layers left running on integer data."""
    layers: collections.Counter[str] = collections.Counter()
    for op in cm.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        kind, prec = rt["layerType"].astype(str), rt["runtimePrecision"].astype(str)
        if kind in ("Convolution", "FullyConnected", "MatMul", "GroupConvolution", "Deconvolution"):
            layers[f"{kind}:{prec}"] += 1
        elif kind == "Eltwise" and prec in ("u8", "i8"):
            layers[f"Eltwise:{prec}"] += 1
    return dict(sorted(layers.items()))


def ir_summary(model) -> dict:
    """What OpenVINO's converter made of the Q/DQ graph (or NNCF wrote): activation FakeQuantize nodes
    by levels / sign / zero point and consumer type, and how the weights are stored."""
    fq: collections.Counter[str] = collections.Counter()
    weights: collections.Counter[str] = collections.Counter()
    for node in model.get_ordered_ops():
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            src = node.input_value(0).get_node()
            if src.get_type_name() == "Constant":
                weights[f"FakeQuantize levels {node.get_attributes()['levels']}"] += 1
                continue
            lo = node.input_value(1).get_node().get_data().ravel()
            hi = node.input_value(2).get_node().get_data().ravel()
            levels = int(node.get_attributes()["levels"])
            # the integer code of float 0: 128 is int8 with zero point 0 (or uint8 shifted by 128),
            # 0 is unsigned without a zero point, anything else a real zero point
            code0 = np.rint(-lo / ((hi - lo) / (levels - 1)))
            if np.all(code0 == levels // 2):
                kind_ = "symmetric (int8, zero point 0)"
            elif np.all(code0 == 0):
                kind_ = "unsigned, zero point 0"
            else:
                kind_ = "asymmetric uint8 (zero point != 0, 128)"
            users = sorted(
                {t.get_node().get_type_name() for o in node.outputs() for t in o.get_target_inputs()}
                & {"Convolution", "MatMul", "ScaledDotProductAttention", "GroupConvolution"}
            ) or ["other"]
            fq[f"levels {levels}, {kind_} -> {'/'.join(users)}"] += 1
        elif kind == "Convert" and node.input_value(0).get_node().get_type_name() == "Constant":
            et = node.input_value(0).get_element_type().get_type_name()
            if et in ("i8", "u8"):
                weights[f"{et} constant -> Convert -> Multiply (axis of the scale: output channel)"] += 1
    return {"activation_fake_quantize": dict(fq), "weights": dict(weights)}


def openvino_in_child(model: Path, calls_npz: Path, cap: str | None) -> tuple[dict[str, np.ndarray], dict]:
    """OpenVINO's outputs for every call and its compute layers, in a fresh process whose oneDNN is
    capped at ``cap`` (None: the host's instruction set)."""
    env = {**os.environ, **({"ONEDNN_MAX_CPU_ISA": cap} if cap else {})}
    code = "import sys; sys.path.insert(0, %r); import probe_openvino_flavours as p; p._openvino_outputs(*sys.argv[1:])"
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "out.npz")
        cmd = [sys.executable, "-c", code % str(Path(__file__).parent), str(model), str(calls_npz), out]
        rc = subprocess.run(cmd, env=env).returncode
        if rc != 0:  # a capped oneDNN can crash OpenVINO (AVX2 on AVX-512 CPUs): recorded, not fatal
            return None, {
                "error": f"OpenVINO's process died (exit {rc}{' ' + signal.Signals(-rc).name if rc < 0 else ''})"
            }
        with np.load(out) as z:
            got = {k: z[k] for k in z.files}
        return got, json.loads(Path(out + ".json").read_text())


def measure(qdq: Path, calls_npz: Path, refs: dict, group_of: list[int], n_groups: int, caps) -> dict:
    """Exact Q/DQ arithmetic and OpenVINO per ISA cap, per timestep group, against FP32."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(qdq), so, providers=["CPUExecutionProvider"])
    z = np.load(calls_npz)
    keys = sorted(refs, key=lambda k: int(k[1:]))
    exact = {}
    for k in keys:
        exact[k] = sess.run(None, {f.split(".in.")[1]: z[f] for f in z.files if f.startswith(f"{k}.in.")})[0]
    row = {"exact_db": per_group([sqnr_db(refs[k], exact[k]) for k in keys], group_of, n_groups), "openvino": {}}
    for cap in caps:
        got, layers = openvino_in_child(qdq, calls_npz, cap)
        if got is None:
            row["openvino"][cap or "host"] = layers
            continue
        dep = [sqnr_db(refs[k], got[k]) for k in keys]
        kern = [sqnr_db(exact[k], got[k]) for k in keys]
        d = per_group(dep, group_of, n_groups)
        row["openvino"][cap or "host"] = {
            "deployed_db": d,
            "gap_db": [round(max(0.0, e - x), 2) for e, x in zip(row["exact_db"], d)],
            "vs_exact_db": per_group(kern, group_of, n_groups),
            "layers": layers,
        }
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-calib", type=int, default=32)
    ap.add_argument("--num-heldout", type=int, default=8, help="held-out prompts (x 20 steps) measured")
    ap.add_argument("--no-nncf", action="store_true", help="skip NNCF's model")
    ap.add_argument("--flavours", nargs="*", default=list(FLAVOURS), choices=list(FLAVOURS))
    args = ap.parse_args()

    import openvino as ov

    from edgeq.manifest import library_versions
    from edgeq.runtime.cpu import detect
    from edgeq.stages.calibration import calibrate, capture_set
    from edgeq.stages.config import BuildOptions
    from edgeq.stages.context import prepare
    from edgeq.stages.qdq import quantize_unet

    cpu = detect()
    caps = host_caps()
    print(f"CPU: {cpu.family} ({' '.join(cpu.flags)}); OpenVINO paths measured: {[c or 'host' for c in caps]}")
    work = Path(tempfile.mkdtemp(prefix="edgeq-probe-"))
    results: dict = {"cpu": {"family": cpu.family, "flags": list(cpu.flags)}, "versions": library_versions()}
    rows: dict = {}
    calls_npz = work / "calls.npz"
    refs: dict = {}
    group_of: list[int] = []
    groups = None
    for name in args.flavours:
        act, sym, family = FLAVOURS[name]
        opts = BuildOptions(
            target=str(profile_for(act, sym, work)),
            model="tiny-sd",
            group_mode="shared",
            cpu=family,
            num_calib=args.num_calib,
            num_heldout=args.num_heldout,
        )
        ctx = prepare(opts)
        cal_cap = capture_set(ctx, "calibration")
        t0 = time.time()
        v = quantize_unet(ctx, calibrate(ctx, cal_cap)["unet"], cal_cap)
        qdq = v.shared_dir / "model.onnx"
        if groups is None:
            groups = [g.to_dict() for g in v.groups]
            step_group = {s: g["index"] for g in groups for s in g["steps"]}
            flat = {}
            for i, s in enumerate(capture_set(ctx, "heldout").unet_samples()):
                for n, x in s.feeds.items():
                    flat[f"c{i}.in.{n}"] = x
                refs[f"c{i}"] = s.reference
                group_of.append(step_group[s.step])
            np.savez(calls_npz, **flat)
            fp32_path, nncf_cap, nncf_cache = ctx.export.path("unet"), cal_cap, ctx.cache
        print(f"{name}: Q/DQ graph {qdq} ({time.time() - t0:.0f} s); measuring", flush=True)
        row = measure(qdq, calls_npz, refs, group_of, len(groups), caps)
        row["ir"] = ir_summary(ov.convert_model(str(qdq)))
        rows[name] = row
        print(name, json.dumps({k: v for k, v in row.items() if k != "ir"}), flush=True)
    if not args.no_nncf:
        from bench_peers import nncf_tiny  # noqa: PLC0415

        nncf_path, info = nncf_tiny(fp32_path, nncf_cap, nncf_cache)
        row = {"exact_db": None}
        row.update({"openvino": measure_ov_only(nncf_path, calls_npz, refs, group_of, len(groups), caps)})
        row["ir"] = ir_summary(ov.Core().read_model(str(nncf_path)))
        row["settings"] = info.get("settings")
        rows["NNCF INT8"] = row
    results.update({"groups": groups, "heldout_calls": len(refs), "flavours": rows})
    write(results, cpu)


def measure_ov_only(model: Path, calls_npz: Path, refs: dict, group_of, n_groups: int, caps) -> dict:
    """OpenVINO per ISA cap for a model that has no Q/DQ ONNX (NNCF's IR)."""
    keys = sorted(refs, key=lambda k: int(k[1:]))
    out_rows = {}
    for cap in caps:
        got, layers = openvino_in_child(model, calls_npz, cap)
        if got is None:
            out_rows[cap or "host"] = layers
            continue
        out_rows[cap or "host"] = {
            "deployed_db": per_group([sqnr_db(refs[k], got[k]) for k in keys], group_of, n_groups),
            "layers": layers,
        }
    return out_rows


def write(results: dict, cpu) -> None:
    from edgeq.fsutil import write_json

    name = f"openvino_flavours_{cpu.family}"
    write_json(ROOT / "benchmarks" / f"{name}.json", results)  # first: the table below cannot lose it
    lines = [
        f"OpenVINO activation flavours on trained tiny-sd, CPU {cpu.family} ({' '.join(cpu.flags)}), "
        f"OpenVINO {results['versions'].get('openvino')}: `python tools/probe_openvino_flavours.py`. "
        f"UNet SQNR against FP32 per timestep group on {results['heldout_calls']} held-out calls; "
        "Conv-only W8A8 (the rest float) so the convolutions' activation flavour is all that differs.",
        "",
        "| flavour | OpenVINO path | exact Q/DQ dB | OpenVINO dB | gap dB | compute layers as run |",
        "|---|---|---|---|---|---|",
    ]
    for name_, row in results["flavours"].items():
        for cap, r in row["openvino"].items():
            label = "host" if cap == "host" else f"ONEDNN_MAX_CPU_ISA={cap}"
            if "error" in r:
                lines.append(f"| {name_} | {label} | - | - | - | {r['error']} |")
                continue
            ex = " / ".join(f"{x:.1f}" for x in row["exact_db"]) if row["exact_db"] else "-"
            dep = " / ".join(f"{x:.1f}" for x in r["deployed_db"])
            gap = " / ".join(f"{x:.1f}" for x in r["gap_db"]) if "gap_db" in r else "-"
            lay = ", ".join(f"{k} {v}" for k, v in r["layers"].items())
            lines.append(f"| {name_} | {label} | {ex} | {dep} | {gap} | {lay} |")
    lines += ["", "What OpenVINO's converter made of each graph (activation FakeQuantize nodes; weights):", ""]
    for name_, row in results["flavours"].items():
        fq = "; ".join(f"{v} x {k}" for k, v in row["ir"]["activation_fake_quantize"].items())
        w = "; ".join(f"{v} x {k}" for k, v in row["ir"]["weights"].items())
        lines.append(f"- **{name_}**: {fq}. Weights: {w}.")
    out = ROOT / "benchmarks" / f"{name}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
