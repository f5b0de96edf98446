"""edgeq targets: the shipped target profiles, their implementation and whether its runtime is installed."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    del p


def run(args: argparse.Namespace) -> int:
    from edgeq.data import profiles_dir
    from edgeq.profiles import load_profile

    rows = []
    for path in sorted(profiles_dir().glob("*.toml")):
        if path.name.startswith("_"):
            continue
        profile = load_profile(path.stem)
        rows.append((profile, profile.target_class()))
    w = max(len(p.name) for p, _ in rows)
    print(f"{'target':{w}s}  {'runtime':11s}  {'installed':9s}  description")
    missing = {}
    for profile, cls in rows:
        installed = cls.runtime_installed()
        if not installed:
            missing[cls.runtime] = cls.install
        print(f"{profile.name:{w}s}  {cls.runtime:11s}  {'yes' if installed else 'no':9s}  {profile.description}")
    if missing:
        print("to install a missing runtime:\n" + "\n".join(f"  {r}: {cmd}" for r, cmd in missing.items()))
    return 0
