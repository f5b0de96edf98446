"""The build report: report.json, report.md and report.html, with a per-group SQNR plot and an
FP32-versus-INT8 image grid (PNG, drawn with Pillow)."""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.fsutil import write_json
from edgeq.progress import progress
from edgeq.verify.metrics import psnr_db, ssim


@dataclass(frozen=True)
class Report:
    """Results carry their data and know whether they passed; ``report.json`` is :meth:`to_dict`."""

    passed: bool
    target: str
    model: str
    gates: list[dict]
    unet_groups: list[dict]
    e2e: dict[str, Any]
    group_mode: str = "shared"
    variants: dict[str, list[dict]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    peak_rss_gb: dict[str, float] = field(default_factory=dict)  # per stage (timings' keys), process tree
    quantized: dict[str, dict[str, int]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    # per component, from its manifest entry: a target's check of how well execution providers take
    # the graph (ort-mobile: ONNX Runtime's mobile usability checker, a verdict per EP)
    usability: dict[str, dict[str, Any]] = field(default_factory=dict)
    # targets that compile engines (TensorRT): whether they exist, how the checks ran, how to finish
    engines: dict[str, Any] = field(default_factory=dict)
    # UNet MACs left float (weight layers; attention MatMuls apart) and the mixed-precision search
    precision: dict[str, Any] = field(default_factory=dict)
    # the CPU family built for, and the deployed kernels against the exact Q/DQ arithmetic per group
    # (``host``: this machine; ``emulated``: families computed by capping the runtime's instruction set)
    cpu: dict[str, Any] = field(default_factory=dict)
    kernel_fidelity: dict[str, Any] = field(default_factory=dict)
    # other runtimes that run the folder as it is (openvino: OpenVINO GenAI), or why not
    genai: dict[str, Any] = field(default_factory=dict)
    # group gains built: how many activation tensors take one, of how many, at what spread
    gains: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        return cls(**d)

    def failed_gates(self) -> list[dict]:
        return [g for g in self.gates if not g["passed"]]


E2E_LOCKSTEP = 16  # images denoised in lockstep by the end-to-end check


def end_to_end(
    fp32,
    quant,
    prompts: list[str],
    seed: int,
    tiny_sd: bool,
    reference: list[np.ndarray] | None = None,
    known: list[np.ndarray] | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Images from identical seeds through both pipelines: PSNR, SSIM, and tiny-sd adherence.

    ``fp32``: the FP32 pipeline, or, with ``reference`` (the FP32 pipeline's final latents for these
    prompts and seeds, already captured, as VAE decoder inputs), just the FP32 VAE decoder's runner,
    which decodes them: FP32 is not denoised a second time. ``known``: ``quant``'s images of the
    first prompts, already made (the build's kernel-fidelity stage made them with the same runners).
    """
    from edgeq.runtime.pipeline import GenerateOptions
    from edgeq.verify.checks import to_image

    ref: list[np.ndarray] = []
    got = list(known or [])[: len(prompts)]
    # the INT8 images in lockstep batches: a UNet that holds one group's graph at a time loads each
    # group's graph once per batch rather than once per image
    opts = [GenerateOptions(prompt=p, seed=seed + i) for i, p in enumerate(prompts)]
    todo = range(len(got), len(opts), E2E_LOCKSTEP)
    for k in progress(todo, desc="check end to end", unit="batch", knob="--num-heldout") if todo else ():
        got += quant.generate_many(opts[k : k + E2E_LOCKSTEP])
    for i, o in enumerate(opts):
        if reference is not None:
            ref.append(to_image(fp32.run({"latent_sample": reference[i]})["sample"]))
        else:
            ref.append(fp32.generate(o))
    out: dict[str, Any] = {
        "images": len(prompts),
        "psnr_db": float(np.mean([min(psnr_db(a, b), 100.0) for a, b in zip(ref, got)])),
        "ssim": float(np.mean([ssim(a, b) for a, b in zip(ref, got)])),
    }
    if tiny_sd:
        from edgeq.verify.adherence import adherence

        out["adherence"] = adherence(prompts, got).to_dict()
        out["adherence_fp32"] = adherence(prompts, ref).to_dict()
    return out, image_grid(ref[:8], got[:8])


def image_grid(top: list[np.ndarray], bottom: list[np.ndarray], scale: int | None = None) -> np.ndarray:
    """Two rows (FP32 above, INT8 below), upscaled so small images stay visible."""
    h, w = top[0].shape[:2]
    scale = scale or max(1, 128 // h)
    gap = 4
    grid = np.full((2 * h * scale + gap, len(top) * (w * scale + gap) - gap, 3), 255, np.uint8)
    for row, imgs in enumerate((top, bottom)):
        for i, im in enumerate(imgs):
            big = np.kron(im, np.ones((scale, scale, 1), np.uint8))
            y, x = row * (h * scale + gap), i * (w * scale + gap)
            grid[y : y + h * scale, x : x + w * scale] = big
    return grid


def grouping_gain(variants: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """What per-group scales gain over one shared range: per grouped variant, the worst group's and the
    mean SQNR difference in dB (with a group per denoising step, this is per-step scales' gain)."""
    shared = variants.get("shared")
    out: dict[str, dict[str, float]] = {}
    if not shared:
        return out
    for mode, rows in variants.items():
        if mode == "shared" or not rows:
            continue
        a = [r["sqnr_db"] for r in shared]
        b = [r["sqnr_db"] for r in rows]
        out[mode] = {"worst_db": min(b) - min(a), "mean_db": float(np.mean(b) - np.mean(a))}
    return out


def _grouping_gain(variants: dict[str, list[dict]], built: dict[str, Any] | None = None) -> list[str]:
    gains = grouping_gain(variants)
    if not gains:
        return []
    lines = ["", "What per-group scales gain over one shared range (held-out calls):", ""]
    for mode, g in gains.items():
        lines.append(f"- {mode}: worst group {g['worst_db']:+.2f} dB, mean {g['mean_db']:+.2f} dB")
    if not (built and "gains" in gains):
        return lines
    if built.get("fallback"):
        lines.append(
            f"- no activation tensor's group scales differ from the shared one by {built['min_bits']:g} bits "
            f"(`gains_min_bits`): the gains graph gains only the one of {built['candidates']} that differs most"
        )
    else:
        lines.append(
            f"- the gains graph gains {built['tensors']} of {built['candidates']} activation tensors: those whose "
            f"group scales differ from the shared one by at least {built['min_bits']:g} bits (`gains_min_bits`); "
            "the others keep the shared scale and cost no multiply"
        )
    if built.get("held_back"):
        lines.append(
            f"- {built['held_back']} tensors of the attention cores (Q, K, V, scores, probabilities, context) take "
            "no gain whatever their spread (`gains_attention = false`, so that OpenVINO keeps attention fused)"
        )
    return lines


def sqnr_plot(variants: dict[str, list[dict]], threshold: float) -> np.ndarray:
    """Bars of UNet SQNR per timestep group, one colour per deployment mode, threshold dashed."""
    from PIL import Image, ImageDraw

    W, H, pad = 560, 300, 40
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    modes = [m for m in variants if variants[m]]
    if not modes:
        d.text((40, 140), "UNet kept float: no per-group SQNR to plot", fill="black")
        return np.asarray(img)
    n = len(variants[modes[0]])
    vals = [r["sqnr_db"] for m in modes for r in variants[m] if np.isfinite(r["sqnr_db"])] + [threshold]
    top = max(vals) * 1.15 if vals else 1.0
    colours = [(66, 133, 244), (219, 68, 55), (15, 157, 88)]
    slot = (W - 2 * pad) / n
    bw = slot * 0.8 / len(modes)
    for g in range(n):
        for k, m in enumerate(modes):
            v = variants[m][g]["sqnr_db"]
            v = top if not np.isfinite(v) else v
            x0 = pad + g * slot + slot * 0.1 + k * bw
            y0 = H - pad - (H - 2 * pad) * v / top
            d.rectangle([x0, y0, x0 + bw - 2, H - pad], fill=colours[k % 3])
            d.text((x0, y0 - 12), f"{v:.1f}", fill="black")
        r = variants[modes[0]][g]
        d.text((pad + g * slot + slot * 0.2, H - pad + 4), f"g{g} t{r['t_min']:.0f}-{r['t_max']:.0f}", fill="black")
    yt = H - pad - (H - 2 * pad) * threshold / top
    for x in range(pad, W - pad, 10):
        d.line([x, yt, x + 5, yt], fill=(120, 120, 120))
    d.text((W - pad - 90, yt - 12), f"gate {threshold:g} dB", fill=(90, 90, 90))
    for k, m in enumerate(modes):
        d.rectangle([pad + k * 110, 8, pad + k * 110 + 10, 18], fill=colours[k % 3])
        d.text((pad + k * 110 + 14, 6), m, fill="black")
    d.text((pad, 22), "UNet noise-prediction SQNR (dB) per timestep group, held-out prompts", fill="black")
    return np.asarray(img)


def sensitivity_plot(rows: list[dict], top: int = 30) -> np.ndarray:
    """Horizontal bars: worst-group SQNR gained by leaving each node float, most sensitive first."""
    from PIL import Image, ImageDraw

    rows = rows[:top]
    W, row_h, left, pad = 760, 16, 330, 30
    H = pad * 2 + row_h * max(len(rows), 1)
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 8), f"worst-group SQNR gained (dB) by leaving the node float; top {len(rows)}", fill="black")
    hi = max([r["float_gain_db"] for r in rows] + [1e-6])
    for k, r in enumerate(rows):
        y = pad + k * row_h
        d.text((10, y + 2), r["node"][-52:], fill="black")
        w = max(0.0, r["float_gain_db"]) / hi * (W - left - 80)
        colour = (219, 68, 55) if r.get("activation_matmul") else (66, 133, 244)
        d.rectangle([left, y + 2, left + w, y + row_h - 3], fill=colour)
        d.text((left + w + 4, y + 2), f"{r['float_gain_db']:.2f}", fill="black")
    return np.asarray(img)


def tradeoff_plot(curve: list[dict], goal: float) -> np.ndarray:
    """Worst and mean group SQNR against the share of weight-layer MACs left float (measured points)."""
    from PIL import Image, ImageDraw

    W, H, pad = 560, 320, 50
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    xs = [100 * c["float_share"] for c in curve]
    ys = [c["worst_db"] for c in curve] + [c["mean_db"] for c in curve] + [goal]
    x0, x1 = 0.0, max(xs + [1.0]) * 1.1
    y0, y1 = min(ys) - 2, max(ys) + 2

    def pt(x: float, y: float) -> tuple[float, float]:
        return pad + (x - x0) / (x1 - x0) * (W - 2 * pad), H - pad - (y - y0) / (y1 - y0) * (H - 2 * pad)

    d.rectangle([pad, pad, W - pad, H - pad], outline="black")
    gy = pt(0, goal)[1]
    for x in range(pad, W - pad, 8):
        d.line([x, gy, x + 4, gy], fill=(120, 120, 120))
    for key, colour in (("worst_db", (219, 68, 55)), ("mean_db", (66, 133, 244))):
        pts = [pt(100 * c["float_share"], c[key]) for c in curve]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for x, y in pts:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    d.text(
        (pad, 10), "UNet SQNR (dB) vs % of weight-layer MACs left float: worst group (red), mean (blue)", fill="black"
    )
    d.text((pad, H - pad + 8), f"{x0:.1f}%", fill="black")
    d.text((W - pad - 30, H - pad + 8), f"{x1:.1f}%", fill="black")
    d.text((8, pad), f"{y1:.0f}", fill="black")
    d.text((8, H - pad - 10), f"{y0:.0f}", fill="black")
    d.text((W - pad - 90, gy - 14), f"goal {goal:g} dB", fill="black")
    return np.asarray(img)


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _fidelity_markdown(cpu: dict[str, Any], fid: dict[str, Any]) -> list[str]:
    if not fid:
        return []
    lines = ["", "## Kernel fidelity: quantization error and kernel error", ""]
    if cpu.get("family"):
        on = cpu.get("built_on", {})
        lines += [
            f"Built for the **{cpu['family']}** int8 kernel family: {cpu['weight_bits']}-bit weights ({cpu['reason']}). "
            f"Built and checked on {on.get('model', '?')} ({' '.join(on.get('flags', []))}).",
            "",
        ]
    lines += [
        "Quantization error: the exact Q/DQ arithmetic (ONNX Runtime, graph optimisation off) against FP32. "
        "Kernel error: the deployed runtime's int8 kernels against that exact arithmetic, on the same calls.",
        "",
        "| family | group | calls | exact vs FP32 dB | deployed vs FP32 dB | kernel gap dB |",
        "|---|---|---|---|---|---|",
    ]
    runs = [fid.get("host"), *fid.get("emulated", {}).values()]
    for d in runs:
        if not d:
            continue
        label = d["family"] + (" (emulated)" if d.get("emulated") else " (this machine)")
        for g in d["groups"]:
            lines.append(
                f"| {label} | {g['index']} | {g['calls']} | {g['exact_db']:.2f} | {g['deployed_db']:.2f} | "
                f"{g['gap_db']:.2f} |"
            )
        lines += [f"| {label} | note | | {n} | | |" for n in d.get("notes", [])]
    return lines


def _markdown(r: Report) -> str:
    lines = [
        f"# edgeq build report: {r.model} -> {r.target}",
        "",
        f"**{'PASSED' if r.passed else 'FAILED'}** (group mode: {r.group_mode})",
        "",
        "## Gates",
        "",
        "| component | metric | group | value | threshold | passed |",
        "|---|---|---|---|---|---|",
    ]
    for g in r.gates:
        lines.append(
            f"| {g['component']} | {g['metric']} | {'' if g['group'] is None else g['group']} | "
            f"{g['value']:.4g} | {g['threshold']:g} | {'yes' if g['passed'] else '**no**'} |"
        )
    lines += [
        "",
        "## UNet per timestep group (held-out prompts)",
        "",
        "| group | t range | " + " | ".join(f"{m} SQNR dB" for m in r.variants) + " | cosine (deployed) |",
        "|---|---|" + "---|" * len(r.variants) + "---|",
    ]
    for i, row in enumerate(r.unet_groups):
        vals = " | ".join(f"{r.variants[m][i]['sqnr_db']:.2f}" for m in r.variants)
        lines.append(f"| {row['index']} | {row['t_min']:.0f}-{row['t_max']:.0f} | {vals} | {row['cosine']:.5f} |")
    lines += _grouping_gain(r.variants, r.gains)
    lines += ["", "## End to end (same seeds as FP32)", ""]
    for k, v in r.e2e.items():
        lines.append(f"- {k}: {json.dumps(v) if isinstance(v, dict) else (f'{v:.4g}' if isinstance(v, float) else v)}")
    lines += _fidelity_markdown(r.cpu, r.kernel_fidelity)
    lines += _usability_markdown(r.usability)
    if r.engines:
        lines += ["", "## Engines", ""] + [f"- {k}: {v}" for k, v in r.engines.items()]
    if r.genai:
        lines += ["", "## OpenVINO GenAI", ""]
        if r.genai.get("ready") and r.genai.get("folder"):
            lines.append(f"`{r.genai['folder']}/` runs in OpenVINO GenAI ({', '.join(r.genai['pipelines'])}): ")
            lines.append(f"`{r.genai['usage']}`. Its UNet is {r.genai['unet']}; {r.genai['reason']}.")
        elif r.genai.get("ready"):
            lines.append(f"This folder runs in OpenVINO GenAI as it is ({', '.join(r.genai['pipelines'])}): ")
            lines.append(f"`{r.genai['usage']}`")
        else:
            lines.append(f"Not a GenAI folder: {r.genai['reason']}.")
    lines += _precision_markdown(r.precision)
    lines += ["", "## Quantized nodes", ""]
    for comp, c in r.quantized.items():
        lines.append(
            f"- {comp}: {c['quantized']} int8, {c['float']} float, {c['activation_tensors']} activation ranges"
        )
    lines += [
        "",
        "Every float node and its reason: `quant_summary.txt` and `quant_plan.json`.",
        "",
        "## Time and peak memory per stage",
        "",
        "Peak memory: resident set of the build's process and every process it started (statistics run "
        "in a child process), sampled every 0.25 s.",
        "",
        "| stage | seconds | peak RSS GB |",
        "|---|---|---|",
        *(
            f"| {k.removesuffix('_s')} | {v} | {r.peak_rss_gb[k] if k in r.peak_rss_gb else '-'} |"
            for k, v in r.timings.items()
        ),
        "",
        "![SQNR per group](sqnr_per_group.png)",
        "",
        "![FP32 (top) vs INT8 (bottom)](grid.png)",
        "",
    ]
    return "\n".join(lines)


def _precision_markdown(p: dict[str, Any]) -> list[str]:
    """UNet MACs left float, and what the mixed-precision search left float and why."""
    if not p:
        return []
    f = p.get("float_macs", {})
    lines = [
        "",
        "## Precision of the UNet",
        "",
        f"- weight-layer MACs left float: {100 * f.get('float_share', 0.0):.2f}% of {f.get('weight_layer_macs', 0):,}",
        f"- attention score/value MatMuls: {f.get('attention_matmuls', 0) - f.get('attention_matmuls_float', 0)} int8, "
        f"{f.get('attention_matmuls_float', 0)} float ({f.get('attention_matmul_macs', 0):,} MACs, counted apart)",
    ]
    mp = p.get("mixed_precision")
    if mp:
        lines += [
            f"- mixed precision: goal worst group >= {mp['goal_db']:g} dB; searched to "
            f"{mp.get('searched_to_db', mp['goal_db']):g} dB on calibration calls (simulated): "
            f"{'reached' if mp['met'] else '**not reached**'}; cap {100 * mp['max_float_share']:.0f}% of MACs",
            "",
            "| node left float | worst-group gain dB | MACs % | worst group after dB |",
            "|---|---|---|---|",
            *(
                f"| {x['node']} | {x['gain_db']:.2f} | {100 * x['mac_share']:.2f} | {x['worst_db_after']:.2f} |"
                for x in mp["float_nodes"]
            ),
            "",
            "![trade-off](tradeoff.png)",
        ]
    rc = p.get("range_choice")
    if rc:
        methods = sorted({m for row in rc["measured_worst_db"].values() for m in row})
        lines += [
            "",
            f"### Range method per tensor class (measured on {rc['calls']} calibration calls, simulated)",
            "",
            f"Worst group with every class at {rc['default']}: {rc['baseline_worst_db']:.2f} dB; "
            f"with each class at its winner: {rc['final_worst_db']:.2f} dB.",
            "",
            "| tensor class | tensors | " + " | ".join(f"{m} dB" for m in methods) + " | chosen |",
            "|---|---|" + "---|" * len(methods) + "---|",
            *(
                f"| {c} | {rc['tensors_per_class'][c]} | "
                + " | ".join(f"{row[m]:.2f}" if m in row else "-" for m in methods)
                + f" | {rc['winners'][c]} |"
                for c, row in rc["measured_worst_db"].items()
            ),
        ]
    return lines


def _usability_markdown(usability: dict[str, dict[str, Any]]) -> list[str]:
    """Execution-provider usability per component: verdicts in a table, then the reasons given."""
    if not usability:
        return []
    eps = sorted({ep for u in usability.values() for ep in u.get("verdicts", {})})
    tool = next(iter(usability.values())).get("tool", "")
    lines = [
        "",
        "## Execution-provider usability" + (f" (`{tool}`)" if tool else ""),
        "",
        "| component | " + " | ".join(eps) + " |",
        "|---|" + "---|" * len(eps),
    ]
    for comp, u in usability.items():
        v = u.get("verdicts", {})
        lines.append(f"| {comp} | " + " | ".join(str(v.get(ep, {}).get("verdict")) for ep in eps) + " |")
    for comp, u in usability.items():
        for ep, v in u.get("verdicts", {}).items():
            if v.get("reasons"):
                lines += ["", f"{comp}, {ep}:", "", *(f"- {x}" for x in v["reasons"])]
    return lines


def write(folder: Path, r: Report, grid: np.ndarray) -> None:
    threshold = next((g["threshold"] for g in r.gates if g["metric"] == "sqnr_db"), 0.0)
    plot = _png(sqnr_plot(r.variants or {"deployed": r.unet_groups}, threshold))
    grid_png = _png(grid)
    (folder / "sqnr_per_group.png").write_bytes(plot)
    (folder / "grid.png").write_bytes(grid_png)
    images = [("sqnr_per_group.png", plot), ("grid.png", grid_png)]
    mp = r.precision.get("mixed_precision")
    if mp:
        images.append(("tradeoff.png", _png(tradeoff_plot(mp["curve"], mp["goal_db"]))))
        (folder / "tradeoff.png").write_bytes(images[-1][1])
    write_json(folder / "report.json", r.to_dict())
    md = _markdown(r)
    (folder / "report.md").write_text(md)
    body = html.escape(md)
    for name, data in images:
        tag = f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        body = body.replace(html.escape(f"]({name})"), f"]</p>{tag}<p>")
    (folder / "report.html").write_text(
        f"<!doctype html><meta charset=utf-8><title>edgeq report</title><pre style='white-space:pre-wrap'>{body}</pre>\n"
    )
