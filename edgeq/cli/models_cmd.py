"""edgeq models"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from edgeq.errors import EdgeqError
    from edgeq.models.presets import PRESETS
    from edgeq.models.weights import resolve

    w = max(len("preset"), *(len(n) for n in PRESETS))
    print(f"{'preset':{w}s}  {'family':6s}  {'px':>5s}  {'scheduler':9s}  {'steps':>5s}  weights")
    for name, spec in PRESETS.items():
        try:
            where = resolve(name).describe()
        except EdgeqError:
            cache = (
                "or fill the Hugging Face cache: " + ", ".join(spec.repo_ids)
                if spec.repo_ids
                else "no repository holds the whole pipeline: give the assembled diffusers folder"
            )
            where = f"not found (give --weights PATH, {cache})"
        print(f"{name:{w}s}  {spec.family:6s}  {spec.resolution:5d}  {spec.scheduler:9s}  {spec.steps:5d}  {where}")
    return 0
