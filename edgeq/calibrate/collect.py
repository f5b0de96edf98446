"""Streaming statistics: one forward pass at a time, a histogram per tensor per denoising step.

The graph is augmented so the tensors that need ranges become outputs; each captured UNet call is
run alone and its activations are folded into histograms, then dropped. Peak memory is the model,
one forward pass's requested activations, and the histograms: tensors x steps x 32 KiB (4096
int64 counts; tiny-sd: 126 x 20 x 32 KiB = 80 MB; SD1.5 about 700 x 25 x 32 KiB = 560 MB).
ONNX Runtime's own calibrator instead keeps every intermediate output of every sample.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgeq.calibrate.histogram import BINS, Hist, merge_all
from edgeq.errors import EdgeqError
from edgeq.progress import progress


@dataclass
class Stats:
    """Histograms of each tensor at each step (steps are keyed by their timestep)."""

    tensors: list[str]
    timesteps: list[float]
    hists: dict[str, list[Hist]] = field(default_factory=dict)  # tensor -> one per step

    def merge_in(self, parts: Iterable[Stats]) -> None:
        """Add partial statistics of other calls (exact, in any order): the cluster's reduction."""
        for part in parts:
            for t in part.tensors:
                mine = self.hists.setdefault(t, [Hist.empty() for _ in self.timesteps])
                for s, h in enumerate(part.hists[t]):
                    if h.n:
                        mine[s] = mine[s].merged(h) if mine[s].n else h.copy()

    def group(self, tensor: str, steps: Iterable[int]) -> Hist:
        return merge_all([self.hists[tensor][s] for s in steps])

    def absmax_profile(self) -> np.ndarray:
        """log2 of each tensor's |max| at each step: [steps, tensors], the grouping signal."""
        prof = np.array([[max(abs(h.lo), abs(h.hi), 1e-8) for h in self.hists[t]] for t in self.tensors])
        return np.log2(prof).T

    def save(self, path: Path) -> None:
        counts = np.stack([np.stack([h.counts for h in self.hists[t]]) for t in self.tensors])
        scalars = np.array(
            [[(h.exp, h.lo, h.hi, h.n, h.sumsq) for h in self.hists[t]] for t in self.tensors], np.float64
        )
        fd, tmp = tempfile.mkstemp(prefix=".stats-", suffix=".npz", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(
                f,
                counts=counts,
                scalars=scalars,
                tensors=np.array(self.tensors),
                timesteps=np.array(self.timesteps, np.float64),
            )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Stats:
        with np.load(path) as z:
            tensors = [str(t) for t in z["tensors"]]
            counts, scalars = z["counts"], z["scalars"]
            st = cls(tensors, [float(t) for t in z["timesteps"]])
            for i, t in enumerate(tensors):
                st.hists[t] = [
                    Hist(
                        counts[i, s].astype(np.int64), int(sc[0]), float(sc[1]), float(sc[2]), int(sc[3]), float(sc[4])
                    )
                    for s, sc in enumerate(scalars[i])
                ]
        return st


def augmented_model(model_path: Path, tensors: list[str]) -> Path:
    """A copy of the graph (beside the original, sharing its external data) with ``tensors`` as outputs."""
    model = onnx.load(str(model_path), load_external_data=False)
    existing = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    fd, tmp = tempfile.mkstemp(prefix=".calib-", suffix=".onnx", dir=model_path.parent)
    os.close(fd)
    onnx.save_model(model, tmp)
    return Path(tmp)


def augmented_session(model_path: Path, tensors: list[str]):
    """An ONNX Runtime session of the graph with ``tensors`` as extra outputs (basic optimisations,
    so the tensors keep their names).

    No memory arena: each call's requested activations (1.7 GB on SD1.5) are freed after the call
    instead of growing the arena across calls (SD1.5-shaped UNet: 9.1 GB peak over 64 calls with it).
    """
    import onnxruntime as ort

    aug = augmented_model(Path(model_path), tensors)
    try:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.enable_cpu_mem_arena = False
        opts.log_severity_level = 3
        return ort.InferenceSession(str(aug), opts, providers=["CPUExecutionProvider"])
    finally:
        aug.unlink(missing_ok=True)


def dynamic_batch(sess) -> bool:
    """Whether the session's ``sample`` input has a dynamic batch axis (static-shape builds do not)."""
    return any(i.name == "sample" and i.shape and not isinstance(i.shape[0], int) for i in sess.get_inputs())


def collect(
    model_path: Path,
    tensors: list[str],
    samples: Iterable[tuple[int, dict[str, np.ndarray]]],
    timesteps: list[float],
    total: int,
    desc: str = "statistics",
    session=None,
) -> Stats:
    """Fold every sample's activations of ``tensors`` into per-step histograms.

    ``samples`` yields (step index, feeds); each is run alone and released before the next.
    ``session``: an :func:`augmented_session` of these tensors to reuse (cluster workers keep one).
    """
    sess = session if session is not None else augmented_session(model_path, tensors)
    inputs = {i.name for i in sess.get_inputs()}
    split = dynamic_batch(sess)
    st = Stats(list(tensors), list(timesteps), {t: [Hist.empty() for _ in timesteps] for t in tensors})
    calls = progress(samples, total=total, desc=desc, unit="call", knob="--calib-calls", disable=not desc)
    for step, feeds in calls:
        given = {k: v for k, v in feeds.items() if k in inputs}
        for part in _batch_items(given) if split else [given]:
            outs = sess.run(tensors, part)
            for name, arr in zip(tensors, outs):
                try:
                    st.hists[name][step].add(arr)
                except FloatingPointError:
                    raise EdgeqError(
                        f"tensor {name} holds NaN or Inf at step {step} during calibration",
                        "the FP32 model itself produces non-finite values: check the export",
                    ) from None
            del outs
    return st


def component_samples(cap, name: str, shards: list[tuple[int, list[int] | None]]):
    """(step, feeds) of the given prompt shards' calls (``None``: every step) for ``name``."""
    if name == "unet":
        for i, steps in shards:
            for s in cap.shard_samples(i, steps):
                yield s.step, s.feeds
    else:  # the VAE decoder: one call per prompt, on its final latents
        for i, _ in shards:
            yield 0, {"latent_sample": cap.load(i)["vae_decoder.latent_sample"]}


def shard_plan(cap, name: str, limit: int | None) -> tuple[list[tuple[int, list[int] | None]], list[float]]:
    """The prompt shards a component's statistics read, with their steps, and the step timesteps."""
    if name != "unet":
        return [(i, None) for i in range(len(cap.settings.prompts))], [0.0]
    chosen: dict[int, list[int]] = {}
    for i, step in cap.calls(limit):
        chosen.setdefault(i, []).append(step)
    return sorted(chosen.items()), list(cap.timesteps)


_SESSION: dict[tuple, object] = {}  # a cluster worker's session, reused by its next task on the same graph


def collect_shards(model_path: Path, tensors: list[str], cap, name: str, shards, timesteps, reuse=False) -> Stats:
    """Statistics of some prompt shards' calls (a cluster task's partial)."""
    key = (str(model_path), tuple(tensors))
    sess = _SESSION.get(key) if reuse else None
    if reuse and sess is None:
        _SESSION.clear()
        sess = _SESSION[key] = augmented_session(model_path, tensors)
    total = sum(len(steps) if steps is not None else 1 for _, steps in shards)
    return collect(model_path, tensors, component_samples(cap, name, shards), timesteps, total, "", sess)


def _batch_items(feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """A batched call (the classifier-free-guidance pair) as calls of one item each.

    Histograms add over items, so the statistics are the same; the peak memory is one item's
    activations (SD1.5-shaped UNet: 9.6 GB for the pair, 7.1 GB for one). Only for graphs with a
    dynamic batch axis (the caller checks).
    """
    batch = feeds["sample"].shape[0] if "sample" in feeds and feeds["sample"].ndim else 1
    if batch == 1:
        return [feeds]
    return [
        {k: (v[i : i + 1] if v.ndim and v.shape[0] == batch else v) for k, v in feeds.items()} for i in range(batch)
    ]


__all__ = ["BINS", "Stats", "collect"]
