"""One table for several build folders: accuracy, build time, artifact sizes, EP usability verdicts.

    python tools/summarize_builds.py build/tiny-sd-ort-mobile build/tiny-sd-ort-mobile-qnn \
        --out benchmarks/ort_mobile_tiny-sd

writes ``<out>.json`` (the figures) and ``<out>.md`` (the tables). Everything comes from each
folder's ``manifest.json`` and ``report.json``; nothing is run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def summarize(folder: Path) -> dict:
    m = json.loads((folder / "manifest.json").read_text())
    r = json.loads((folder / "report.json").read_text())
    sizes: dict[str, int] = {}
    for rel, a in m["artifacts"].items():
        top = rel.split("/")[0] if "/" in rel else "other"
        sizes[top] = sizes.get(top, 0) + a["bytes"]
    e2e = r["e2e"]
    return {
        "build": str(folder),
        "target": m["target"],
        "status": m["status"],
        "group_mode": r["group_mode"],
        "unet_sqnr_db": {k: [round(x["sqnr_db"], 2) for x in rows] for k, rows in r["variants"].items()},
        "unet_sqnr_deployed_db": [round(x["sqnr_db"], 2) for x in r["unet_groups"]],
        "t_ranges": [f"{x['t_max']:.0f}-{x['t_min']:.0f}" for x in r["unet_groups"]],
        "vae_psnr_db": next((round(g["value"], 2) for g in r["gates"] if g["component"] == "vae_decoder"), None),
        "e2e_psnr_db": round(e2e["psnr_db"], 2),
        "e2e_ssim": round(e2e["ssim"], 4),
        "adherence": e2e.get("adherence"),
        "adherence_fp32": e2e.get("adherence_fp32"),
        "images": e2e["images"],
        "build_s": r["timings"].get("build_s"),
        "check_e2e_s": r["timings"].get("check_e2e_s"),
        "bytes_by_folder": dict(sorted(sizes.items())),
        "bytes_total": sum(a["bytes"] for a in m["artifacts"].values()),
        "precision": {k: c.get("precision") for k, c in m["components"].items()},
        "usability": {
            k: {ep: v["verdict"] for ep, v in c["usability"]["verdicts"].items()}
            for k, c in m["components"].items()
            if "usability" in c
        },
        "qdq_flavours": {k: c["ort_format"]["qdq_flavours"] for k, c in m["components"].items() if "ort_format" in c},
    }


def markdown(rows: list[dict]) -> str:
    out = [
        "| target | group mode | UNet SQNR per group, deployed (dB) | VAE PSNR dB | e2e PSNR dB | SSIM "
        "| adherence colour / shape % (FP32) | build s (before end-to-end check) | build folder MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in rows:
        a, f = s["adherence"] or {}, s["adherence_fp32"] or {}
        adh = f"{a.get('colour', 0):.1f} / {a.get('shape', 0):.1f} ({f.get('colour', 0):.1f} / {f.get('shape', 0):.1f})"
        out.append(
            f"| {s['target']} | {s['group_mode']} | {' / '.join(f'{x:.1f}' for x in s['unet_sqnr_deployed_db'])} "
            f"| {s['vae_psnr_db']} | {s['e2e_psnr_db']:.2f} | {s['e2e_ssim']:.3f} | {adh} | {s['build_s']} "
            f"| {s['bytes_total'] / 1e6:.1f} |"
        )
    eps = sorted({ep for s in rows for u in s["usability"].values() for ep in u})
    out += ["", "ONNX Runtime's mobile usability checker, verdict per execution provider:", ""]
    out += ["| target | component | " + " | ".join(eps) + " |", "|---|---|" + "---|" * len(eps)]
    for s in rows:
        for comp, u in s["usability"].items():
            out.append(f"| {s['target']} | {comp} | " + " | ".join(u.get(ep, "") for ep in eps) + " |")
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("builds", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="path stem: writes <out>.json and <out>.md")
    args = p.parse_args()
    rows = [summarize(b) for b in args.builds]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
