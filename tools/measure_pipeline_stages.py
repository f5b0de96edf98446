#!/usr/bin/env python
"""Peak memory per stage of one low-memory generation (``Pipeline(..., low_memory=True)``): the text
encoders, the UNet, the VAE decoder, each alone in memory, from the build's own runners. The images are
the build's verification bundle's (its prompts and seeds), or ``--prompt``.

    python tools/measure_pipeline_stages.py BUILD_DIR [--prompt TEXT] [--out benchmarks/<name>.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    import edgeq.runtime.pipeline as P
    from edgeq.manifest import read_manifest
    from edgeq.runtime import cpu as cpu_mod
    from edgeq.stages.memory import PeakRss
    from edgeq.targets import for_manifest
    from edgeq.verify.device import read_bundle

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", type=Path)
    ap.add_argument("--prompt", help="one image of this prompt (seed 0) instead of the bundle's")
    ap.add_argument("--out", type=Path, help="also write the table here (markdown)")
    a = ap.parse_args()

    rows: list[tuple[str, float, float]] = []
    current = [PeakRss(interval=0.1).__enter__(), time.time()]

    def mark(stage: str) -> None:  # one stage ends, the next one's peak starts
        peak, t0 = current
        peak.__exit__(None, None, None)
        rows.append((stage, time.time() - t0, peak.gb))
        current[:] = [PeakRss(interval=0.1).__enter__(), time.time()]

    hold = P.Pipeline._hold_only
    stage = ["loading"]

    def hold_only(self, *names):  # a stage ends where the pipeline drops what it held
        if self.runners:
            mark(stage[0])
        stage[0] = " + ".join(names)
        hold(self, *names)

    P.Pipeline._hold_only = hold_only
    manifest = read_manifest(a.build)
    if a.prompt:
        opts = [P.GenerateOptions(prompt=a.prompt, seed=0)]
    else:
        bundle = read_bundle(a.build)
        opts = [P.GenerateOptions(prompt=im["prompt"], seed=im["seed"]) for im in bundle["images"]]
    pipe = P.Pipeline(a.build, runners=for_manifest(manifest).runners(), low_memory=True)
    pipe.generate_many(opts)
    mark(stage[0])
    current[0].__exit__(None, None, None)
    p = manifest["pipeline"]
    lines = [
        f"`{a.build}` ({manifest['model']['family']}, {manifest.get('target')}), {len(opts)} image(s) at "
        f"{p['resolution'][0]}x{p['resolution'][1]}, {p['steps']} steps; CPU {cpu_mod.detect().describe()}",
        "",
        "| stage (alone in memory) | s | peak RSS GB |",
        "|---|---|---|",
        *(f"| {name} | {s:.1f} | {gb:.2f} |" for name, s, gb in rows),
    ]
    print("\n".join(lines))
    if a.out:
        a.out.write_text("# One low-memory generation, stage by stage\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
