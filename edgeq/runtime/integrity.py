"""Build folder integrity: every artifact against the sha256 its manifest records.

``edgeq check`` hashes every file before anything runs. ``edgeq run`` hashes each file once and
then trusts a stamp keyed by the file's size and modification time (kept in the user cache, keyed by
the folder's path, so the build folder itself is never written to), so a changed file is refused by
name while an unchanged build starts without reading gigabytes of weights on every run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from edgeq.errors import EdgeqError
from edgeq.fsutil import sha256_file


def _stamp_paths(folder: Path) -> list[Path]:
    cache = Path(os.environ.get("EDGEQ_CACHE", Path.home() / ".cache" / "edgeq")) / "verified"
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:24]
    return [cache / f"{key}.json"]


def _read_stamp(folder: Path) -> dict[str, Any]:
    for p in _stamp_paths(folder):
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            return data
    return {}


def _write_stamp(folder: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=1, sort_keys=True)
    for p in _stamp_paths(folder):
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
            tmp.write_text(text)
            tmp.replace(p)
            return
        except OSError:
            continue  # no writable cache: no stamp, every run verifies


def _refuse(path: Path, problem: str) -> EdgeqError:
    return EdgeqError(
        f"{path} {problem}: the build folder was changed or damaged after it was built",
        "copy the whole build folder again from where it was built, or rebuild it",
    )


def verify(folder: Path, manifest: dict[str, Any], trust_stamp: bool = True, progress=None) -> int:
    """Check every artifact's size and sha256 against the manifest; returns the files hashed now.

    ``trust_stamp``: skip files whose size and modification time match the last verified ones.
    Raises :class:`EdgeqError` naming the first missing, resized or changed file."""
    artifacts = manifest.get("artifacts", {})
    stamp = _read_stamp(folder) if trust_stamp else {}
    new: dict[str, Any] = {}
    hashed = 0
    for rel, info in sorted(artifacts.items()):
        p = folder / rel
        try:
            st = p.stat()
        except OSError:
            raise EdgeqError(f"{p} is missing from the build", "copy the whole build folder, or rebuild") from None
        if st.st_size != info["bytes"]:
            raise _refuse(
                p, f"has {st.st_size} bytes where the manifest records {info['bytes']} (truncated or replaced)"
            )
        mark = [st.st_size, st.st_mtime_ns, info["sha256"]]
        if stamp.get(rel) == mark:
            new[rel] = mark
            continue
        if progress is not None:
            progress(rel)
        if sha256_file(p) != info["sha256"]:
            raise _refuse(p, f"does not match its sha256 in the manifest ({info['sha256'][:16]}...)")
        hashed += 1
        new[rel] = mark
    if new != stamp:
        _write_stamp(folder, new)
    return hashed
