"""Two sets of builds of the same model, one folder per target, compared for identity.

For a change that must not change behaviour (a refactor): ``quant_plan.json`` and
``quant_summary.txt`` byte for byte, every graph file (``.onnx``, ``.onnx_data``, ``.xml``,
``.bin``, ``.ort``) by sha256, and every gate value exactly. ``.ort`` files are reported apart:
ONNX Runtime serialises their kernel type-string table in hash-map order, so two conversions of
the same graph differ in bytes (the Q/DQ graphs they come from are compared in the ``.onnx`` files).

    python tools/compare_builds.py BEFORE AFTER [--targets ort-cpu openvino ...] [--md FILE]

BEFORE and AFTER hold one build folder per target (``BEFORE/ort-cpu``, ...). Exit 0 when identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

GRAPHS = (".onnx", ".xml", ".bin", ".ort")
TARGETS = ("ort-cpu", "openvino", "ort-mobile", "ort-mobile-qnn", "tensorrt")


def _graphs(folder: Path) -> dict[str, str]:
    files = [p for p in folder.rglob("*") if p.suffix in GRAPHS or p.name.endswith(".onnx_data")]
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


def _gates(folder: Path) -> list[tuple]:
    m = json.loads((folder / "manifest.json").read_text())
    return [(g["component"], g["metric"], g["group"], g["value"]) for g in m["gates"]]


def compare(before: Path, after: Path) -> tuple[bool, str]:
    same = {f: (before / f).read_bytes() == (after / f).read_bytes() for f in ("quant_plan.json", "quant_summary.txt")}
    gb, ga = _graphs(before), _graphs(after)
    differing = sorted(f for f in gb if f in ga and gb[f] != ga[f])
    gates_same = _gates(before) == _gates(after)
    ok = all(same.values()) and set(gb) == set(ga) and gates_same and all(f.endswith(".ort") for f in differing)
    ort = [f for f in differing if f.endswith(".ort")]
    row = (
        f"| {'yes' if same['quant_plan.json'] else 'NO'} | {'yes' if same['quant_summary.txt'] else 'NO'} | "
        f"{len(gb) - len(differing)} of {len(gb)}" + (f" ({len(ort)} .ort differ in bytes)" if ort else "")
        + f" | {len(_gates(before))} {'identical' if gates_same else 'DIFFERENT'} |"
    )  # fmt: skip
    return ok, row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--targets", nargs="+", default=list(TARGETS))
    ap.add_argument("--md", type=Path, help="also write the table to this markdown file")
    args = ap.parse_args()
    lines = [
        "| target | quant_plan.json identical | quant_summary.txt identical | graph files identical | gate values |",
        "|---|---|---|---|---|",
    ]
    all_ok = True
    for t in args.targets:
        ok, row = compare(args.before / t, args.after / t)
        all_ok &= ok
        lines.append(f"| {t} {row}")
    text = "\n".join(lines) + "\n"
    print(text + ("identical" if all_ok else "DIFFERENT"))
    if args.md:
        args.md.write_text(text)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
