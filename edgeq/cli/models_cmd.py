"""edgeq models"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from edgeq.errors import EdgeqError
    from edgeq.models.presets import PRESETS
    from edgeq.models.weights import resolve

    print(f"{'preset':8s}  {'family':6s}  {'px':>5s}  {'scheduler':9s}  weights")
    for name, spec in PRESETS.items():
        try:
            where = resolve(name).describe()
        except EdgeqError:
            where = "not found (give --weights PATH, or fill the Hugging Face cache: " + ", ".join(spec.repo_ids) + ")"
        print(f"{name:8s}  {spec.family:6s}  {spec.resolution:5d}  {spec.scheduler:9s}  {where}")
    return 0
