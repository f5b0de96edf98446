"""Data that ships with edgeq: target profiles and prompt sets (package data, so a non-editable
install finds them). The repository's top-level ``targets/`` and ``calibration_data/`` are links
to these folders."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from edgeq.errors import EdgeqError


def _dir(name: str) -> Path:
    return Path(str(files("edgeq.data") / name))


def profiles_dir() -> Path:
    """The shipped target profiles (``<name>.toml``; files starting with ``_`` are bases to extend)."""
    return _dir("targets")


def prompt_file(dataset: str, which: str) -> Path:
    """A shipped prompt set: ``calibration_data/<dataset>/<which>.txt`` (calibration, heldout)."""
    path = _dir("calibration_data") / dataset / f"{which}.txt"
    if not path.is_file():
        known = sorted(p.name for p in _dir("calibration_data").iterdir() if p.is_dir())
        raise EdgeqError(
            f"no {which} prompt set for {dataset!r} ({path})",
            f"give --{'calib' if which == 'calibration' else 'heldout'}-prompts FILE; shipped sets: {', '.join(known)}",
        )
    return path
