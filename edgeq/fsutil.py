"""Small file-system helpers: atomic writes, hashing, writability checks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeq.errors import EdgeqError


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_onnx(model: Any, dst: Path) -> None:
    """Save an ONNX model with its weights in one external file beside it (``<name>_data``)."""
    import onnx

    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        model,
        str(dst),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=dst.name + "_data",
        size_threshold=1024,
    )


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def ensure_writable_dir(path: Path) -> None:
    """Fail early, with the fix named, when ``path`` cannot be created or written."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise EdgeqError(f"output path {path} is inside {probe}, which is a file", "choose another --out folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise EdgeqError(f"cannot write to {probe}", "choose a writable --out folder or fix its permissions")


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``final``; rename it into place on success.

    On any error the partial folder is removed, so nothing half-written looks finished.
    """
    ensure_writable_dir(final.parent)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
