#!/usr/bin/env python
"""One FP32 UNet call as the calibration capture runs it, against the plain pipeline's call.

Variants, each in turn with one session loaded at a time, a warm-up call then ``--repeats`` timed
calls on the same inputs (a batch of two, as classifier-free guidance runs): the capture's graph
(ort-cpu's calibrated tensors as extra outputs, no graph optimisation, one batch item at a time,
arena handed back after each call) without and with the tensors fetched; the plain graph fully
optimised, as the pair and one item at a time; the optimised graph with the tensors as outputs. The
outputs are compared bit for bit. Prints a table, saves benchmarks/capture_call_<family>.{md,json}.

    python tools/bench_capture_call.py build/.cache/<model>/fp32 [--repeats 3] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort

    from edgeq.calibrate.collect import augmented_model, augmented_session, run_shrinking
    from edgeq.profiles import load_profile
    from edgeq.quantize.policy import decide, tensors_to_calibrate
    from edgeq.runtime import cpu
    from edgeq.runtime.sessions import batch_items

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path, help="an FP32 export folder (with unet/model.onnx)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=64, help="latent height and width (64: 512 px)")
    a = ap.parse_args()
    path = a.export / "unet" / "model.onnx"
    graph = onnx.load(str(path), load_external_data=False).graph
    policy = load_profile("ort-cpu").policy("unet")
    tensors = tensors_to_calibrate(graph, decide(graph, policy), policy)
    rng = np.random.default_rng(0)
    probe = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dims = {"batch": 2, "height": a.size, "width": a.size, "sequence": 77}
    feeds = {
        i.name: rng.standard_normal([d if isinstance(d, int) else dims[d] for d in i.shape]).astype(np.float32)
        for i in probe.get_inputs()
    }
    feeds["timestep"] = np.array(500.0, np.float32)
    del probe

    def optimised(outputs: list[str]):
        model = augmented_model(path, outputs) if outputs else path
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        finally:
            if outputs:
                Path(model).unlink()

    variants = [
        ("capture graph (unoptimised, items, arena)", lambda: augmented_session(path, tensors, arena=True), True, []),
        ("capture graph, tensors fetched", lambda: augmented_session(path, tensors, arena=True), True, tensors),
        ("plain graph optimised, pair", lambda: optimised([]), False, []),
        ("plain graph optimised, items", lambda: optimised([]), True, []),
        ("optimised with tensors as outputs, items", lambda: optimised(tensors), True, []),
    ]
    rows, outs = [], {}
    for name, make, split, fetch in variants:
        sess = make()

        def call(sess=sess, split=split, fetch=fetch):
            got = []
            for item in batch_items(feeds) if split else [feeds]:
                res = run_shrinking(sess, ["out_sample", *fetch], item)
                got.append(np.array(res[0]))
                del res
            return np.concatenate(got)

        outs[name] = call()
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        rows.append({"variant": name, "median_s": float(np.median(times)), "times_s": times})
        print(f"{name}: {np.median(times):.2f} s", flush=True)
        del sess
    ref = outs[variants[0][0]]
    for r in rows:
        d = float(np.abs(outs[r["variant"]] - ref).max())
        r["max_diff_vs_capture"] = d
    family = cpu.detect().family
    res = {
        "export": str(a.export),
        "latents": a.size,
        "tensors": len(tensors),
        "cpu": cpu.detect().to_dict(),
        "onnxruntime": ort.__version__,
        "rows": rows,
    }
    out = ROOT / "benchmarks" / f"capture_call_{family}"
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    lines = [
        f"# One UNet call as the calibration capture runs it ({a.export}, {a.size}x{a.size} latents, batch 2)",
        "",
        f"`python tools/bench_capture_call.py {a.export} --repeats {a.repeats} --size {a.size}`; CPU family "
        f"{family}, onnxruntime {ort.__version__}; {len(tensors)} calibrated tensors (ort-cpu).",
        "",
        "| variant | median s | max abs diff vs the capture graph |",
        "|---|---|---|",
        *[f"| {r['variant']} | {r['median_s']:.2f} | {r['max_diff_vs_capture']:.1e} |" for r in rows],
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
