#!/usr/bin/env python
"""Does OpenVINO run edgeq's few-step pipeline faster on static shapes? Per image, interleaved.

tiny-sd FP32 at 20 DDIM steps with CFG against tiny-lcm INT8 (a build of tools/bench_few_step.py) at
4 steps, both on OpenVINO with the f32 hint, once with the graphs as built (dynamic axes) and once with
every component compiled for the shapes the pipeline feeds it (reshaped on the first call).

    python tools/probe_openvino_static.py [--lcm-build build/few-step/tiny-lcm-openvino-4step-shared]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class StaticRunner:
    """An OpenVINO runner that compiles the model for the first call's input shapes."""

    def __init__(self, path: Path):
        import openvino as ov

        self.core, self.path, self.req = ov.Core(), path, None
        self.input_names = [n for i in self.core.read_model(str(path)).inputs for n in i.get_names()]

    def run(self, feeds):
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        if self.req is None:
            model = self.core.read_model(str(self.path))
            shapes = {}
            for i in model.inputs:
                name = next(n for n in i.get_names() if n in feeds)
                if i.get_partial_shape().is_dynamic:
                    shapes[i.get_any_name()] = list(np.shape(feeds[name])) or i.get_partial_shape()
            if shapes:
                model.reshape(shapes)
            cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
            self.compiled = self.core.compile_model(model, "CPU", cfg)
            self.req = self.compiled.create_infer_request()
            self.types = {n: i.get_element_type().to_dtype() for i in self.compiled.inputs for n in i.get_names()}
        fed = {
            k: np.asarray(v).astype(self.types[k]).reshape(self.compiled.input(k).get_shape()) for k, v in feeds.items()
        }
        res = self.req.infer(fed)
        return {o.get_any_name(): res[o] for o in self.compiled.outputs}


def main() -> None:
    from edgeq.manifest import read_manifest
    from edgeq.runtime.pipeline import GenerateOptions, Pipeline
    from edgeq.targets import for_manifest

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lcm-build", type=Path, default=ROOT / "build" / "few-step" / "tiny-lcm-openvino-4step-shared")
    ap.add_argument("--sd-fp32", type=Path, default=ROOT / "build" / "few-step" / "tiny-sd-fp32")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    from edgeq.targets.openvino import OpenVinoRunner

    def sd(static: bool):
        pipe = Pipeline(args.sd_fp32)
        for n in list(pipe.runners):
            p = args.sd_fp32 / pipe.manifest["components"][n]["path"]
            pipe.runners[n] = StaticRunner(p) if static else OpenVinoRunner(p, cache=False)
        return pipe

    def lcm(static: bool):
        m = read_manifest(args.lcm_build)
        pipe = Pipeline(args.lcm_build, runners=for_manifest(m).runners())
        if static:
            for n in list(pipe.runners):
                info = m["components"][n]
                pipe.runners[n] = StaticRunner(args.lcm_build / info["path"])
        return pipe

    cases = {
        "tiny-sd FP32 20 steps, dynamic": (sd(False), {}),
        "tiny-sd FP32 20 steps, static": (sd(True), {}),
        "tiny-lcm INT8 4 steps, dynamic": (lcm(False), {"steps": 4}),
        "tiny-lcm INT8 4 steps, static": (lcm(True), {"steps": 4}),
    }
    prompt = "a large red circle in the center on a blue background"
    for pipe, kw in cases.values():
        pipe.generate(GenerateOptions(prompt=prompt, seed=0, **kw))
    t = {k: [] for k in cases}
    for r in range(args.rounds):
        for k, (pipe, kw) in cases.items():
            t0 = time.perf_counter()
            pipe.generate(GenerateOptions(prompt=prompt, seed=r, **kw))
            t[k].append(time.perf_counter() - t0)
    from edgeq.runtime.cpu import detect

    med = {k: float(np.median(v)) * 1000 for k, v in t.items()}
    cpu = detect()
    lines = [
        "# OpenVINO, static against dynamic shapes: tiny-sd 20 FP32 steps and tiny-lcm 4 INT8 steps per image",
        "",
        f"CPU: {cpu.to_dict().get('model')}, flags `{' '.join(cpu.flags) or 'none'}`, family `{cpu.family}`; "
        f"medians of {args.rounds} interleaved rounds. Command: `python tools/probe_openvino_static.py`.",
        "",
        "| pipeline | ms per image |",
        "|---|---|",
        *(f"| {k} | {v:.1f} |" for k, v in med.items()),
        "",
    ]
    for mode in ("dynamic", "static"):
        r = med[f"tiny-sd FP32 20 steps, {mode}"] / med[f"tiny-lcm INT8 4 steps, {mode}"]
        lines.append(f"- {mode} shapes: 20 FP32 steps / 4 INT8 steps = {r:.1f}x")
    md = "\n".join(lines) + "\n"
    (ROOT / "benchmarks" / f"openvino_static_tiny-lcm_{cpu.family}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
