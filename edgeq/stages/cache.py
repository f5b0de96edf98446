"""One cache protocol for every stage: a key from typed inputs and library versions, an atomic
write, a completion marker, reuse, and the stage's time, all in one place.

A stage's result lives under the build cache folder as ``<stage>-<key>`` (a folder with a
``done`` marker, or a single file). The key hashes the stage name, its format version, the
libraries that decide its bytes and every input (dataclasses and paths included), so a rerun
with the same inputs reuses the result and anything else gets a fresh one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgeq.fsutil import write_json

MARKER = "done"
# bump a stage's version when its output format or algorithm changes; a stage named ``<kind>-<component>``
# (``ranges-unet``, ``gains-unet``) takes its kind's version
VERSIONS = {
    "smooth": 1,
    "ranges": 2,
    "mixed": 2,
    "macs": 1,
    "split": 1,
    "quant": 3,
    "stats": 1,
    "trt-sim": 1,
    "gains": 1,
}


def stage_version(stage: str) -> int:
    """The version of a stage: its own entry, else its kind's (the name before the first ``-``)."""
    return VERSIONS.get(stage, VERSIONS.get(stage.split("-")[0], 0))


def _plain(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return x.to_dict() if hasattr(x, "to_dict") else dataclasses.asdict(x)
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (set, frozenset)):
        return sorted(x)
    return str(x)


def digest(*parts: Any, within: tuple[str, ...] = ()) -> str:
    """A short stable hash of JSON-able parts (dataclasses, paths and sets included). Paths under a
    folder of ``within`` count relative to it, so a cache keeps its keys when moved or linked."""
    text = json.dumps(parts, sort_keys=True, default=_plain)
    for prefix in within:
        text = text.replace(prefix, "<cache>")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _libraries() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for lib in ("onnx", "onnxruntime", "numpy"):
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return out


class StageCache:
    """The cache folder of one build, and the timings of the stages that ran against it."""

    def __init__(self, root: Path, log: Callable[[str], None] = print):
        self.root = root
        self.log = log
        self.timings: dict[str, float] = {}
        self.peak_rss_gb: dict[str, float] = {}  # per timed stage: peak RSS of the process tree
        self._libs = _libraries()
        spellings = {str(root), str(root.absolute()), str(root.resolve())}
        self._within = tuple(sorted((s for s in spellings if s not in ("", ".")), key=len, reverse=True))

    def key(self, stage: str, *inputs: Any) -> str:
        return digest(stage, stage_version(stage), self._libs, inputs, within=self._within)

    def path(self, stage: str, *inputs: Any, suffix: str = "") -> Path:
        return self.root / f"{stage}-{self.key(stage, *inputs)}{suffix}"

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Time a stage (``timings[name]``) and sample its peak memory (``peak_rss_gb[name]``)."""
        from edgeq.stages.memory import PeakRss

        t0 = time.time()
        with PeakRss() as peak:
            try:
                yield
            finally:
                self.timings[name] = round(time.time() - t0, 1)
        self.peak_rss_gb[name] = peak.gb

    def folder(self, stage: str, *inputs: Any, make: Callable[[Path], None]) -> Path:
        """``<stage>-<key>/``: reused when complete, else ``make(tmp)`` fills a temporary folder that
        is renamed into place with its marker (an interrupted stage leaves nothing that looks done)."""
        dst = self.path(stage, *inputs)
        if (dst / MARKER).is_file():
            return dst
        tmp = dst.with_name(f".{dst.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        make(tmp)
        (tmp / MARKER).write_text("ok\n")
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
        return dst

    def file(self, stage: str, *inputs: Any, suffix: str, make: Callable[[Path], None], what: str = "") -> Path:
        """``<stage>-<key><suffix>``: reused when present, else ``make(tmp)`` writes it and it is renamed.
        ``what`` names the result in the message a reuse prints."""
        dst = self.path(stage, *inputs, suffix=suffix)
        if dst.is_file():
            self.log(f"reusing {what or stage} {dst.name}")
            return dst
        tmp = dst.with_name(f".{dst.stem}.partial{suffix}")
        tmp.unlink(missing_ok=True)
        make(tmp)
        os.replace(tmp, dst)
        return dst

    def json(self, stage: str, *inputs: Any, make: Callable[[], Any]) -> Any:
        """A JSON result: ``make()`` once, then read back (the same object either way)."""
        path = self.file(stage, *inputs, suffix=".json", make=lambda tmp: write_json(tmp, make()))
        return json.loads(path.read_text())
