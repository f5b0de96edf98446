"""edgeq targets"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    del p


def run(args: argparse.Namespace) -> int:
    from edgeq.targets import TARGETS

    w = max(len(n) for n in TARGETS)
    print(f"{'target':{w}s}  {'runtime':11s}  {'installed':9s}  {'build':7s}  description")
    missing = []
    for t in TARGETS.values():
        installed = "yes" if t.runtime_installed() else "no"
        if not t.runtime_installed():
            missing.append(f"  {t.name}: {t.install}")
        print(
            f"{t.name:{w}s}  {t.runtime:11s}  {installed:9s}  {'yes' if t.implemented else 'planned':7s}  {t.description}"
        )
    if missing:
        print("to install a missing runtime:\n" + "\n".join(missing))
    return 0
