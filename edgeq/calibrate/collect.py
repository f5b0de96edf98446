"""Streaming statistics: one forward pass at a time, a histogram per tensor per denoising step.

The graph is augmented so the tensors that need ranges become outputs; each captured UNet call is
run alone and its activations are folded into histograms, then dropped. Peak memory is the model,
one forward pass's requested activations, and the histograms: tensors x steps x 32 KiB (4096
int64 counts; tiny-sd: 126 x 20 x 32 KiB = 80 MB; SD1.5 about 700 x 25 x 32 KiB = 560 MB).
ONNX Runtime's own calibrator instead keeps every intermediate output of every sample.

Where one call's requested activations would not fit under the memory ceiling (an SDXL UNet at
1024 px), the tensors are split into parts and the calls are run once per part, each part with its
own session (:func:`plan_parts`). The histograms are the same either way: each tensor sees the same
calls in the same order.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgeq.calibrate.histogram import BINS, Hist, merge_all
from edgeq.errors import EdgeqError
from edgeq.progress import progress
from edgeq.runtime.sessions import batch_items


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


def augmented_session(model_path: Path, tensors: list[str], arena: bool = False):
    """An ONNX Runtime session of the graph with ``tensors`` as extra outputs.

    No graph optimisation: the tensors keep their names, and every node computes the same numbers
    whichever tensors are outputs (a fusion that an extra output blocks would otherwise change the
    rounding), so the calibration capture's trajectories do not depend on the target's tensors. At
    SD1.5 size it is no slower than the optimised graph: 10.5 s per call for both, one batch item at a
    time against the pair at once (x86-vnni, 2 cores, medians of 3; the optimised graph with the
    tensors as outputs took 12.2 s).
    ONNX Runtime's default thread count (the machine's cores), on purpose: unfused reductions round
    differently with another count, and the cluster's workers must compute what one process does.

    ``arena`` (the statistics' and the capture's sessions; run them with :func:`run_shrinking`):
    ONNX Runtime's memory arena, handed back after every call. Without an arena every large
    activation is a fresh allocation the kernel zero-fills: an SDXL-shaped UNet call at 1024 px took
    74 s then 48 s and peaked 7.8 GB above its weights, against 46 s and 44 s and 2.8 GB with it
    (x86-vnni, 2 cores). Without the give-back the arena grew across calls (SD1.5-shaped:
    9.1 GB over 64 calls). Without ``arena`` (SmoothQuant's and the sensitivity's few calls): none.
    """
    import onnxruntime as ort

    from edgeq.runtime.sessions import use_shared_arena

    aug = augmented_model(Path(model_path), tensors)
    try:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.enable_cpu_mem_arena = arena
        opts.log_severity_level = 3
        if arena:
            use_shared_arena(opts)
        return ort.InferenceSession(str(aug), opts, providers=["CPUExecutionProvider"])
    finally:
        aug.unlink(missing_ok=True)


def run_shrinking(sess, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``sess.run``, then the session's arena (if it has one) hands its free chunks back to the system. The outputs
    are the caller's to drop: while they live, the chunks that hold them stay with the arena."""
    from edgeq.runtime.sessions import shrinking_run_options

    if not sess.get_session_options().enable_cpu_mem_arena:
        return sess.run(names, feeds)
    return sess.run(names, feeds, shrinking_run_options())


def dynamic_batch(sess) -> bool:
    """Whether the session's ``sample`` input has a dynamic batch axis (static-shape builds do not)."""
    return any(i.name == "sample" and i.shape and not isinstance(i.shape[0], int) for i in sess.get_inputs())


Samples = Iterable[tuple[int, dict[str, np.ndarray]]]


def collect(
    model_path: Path,
    tensors: list[str],
    samples: Samples | Callable[[], Samples],
    timesteps: list[float],
    total: int,
    desc: str = "statistics",
    session=None,
    max_bytes: int | None = None,
) -> Stats:
    """Fold every sample's activations of ``tensors`` into per-step histograms.

    ``samples`` yields (step index, feeds); each is run alone and released before the next. Given as
    a callable returning a fresh iterable, the calls can be run more than once: then, where one call's
    activations would take this process over ``max_bytes`` (None: the memory the system has available
    now), the tensors are split into parts, one pass over the calls per part (:func:`plan_parts`).
    ``session``: an :func:`augmented_session` of these tensors to reuse (cluster workers keep one);
    with it, one pass.
    """
    fresh = samples if callable(samples) else None
    st = Stats(list(tensors), list(timesteps), {t: [Hist.empty() for _ in timesteps] for t in tensors})
    sess = session
    parts = [list(tensors)]
    if session is None and fresh is not None:
        parts = plan_parts(None, tensors, fresh(), max_bytes, desc, graph=Path(model_path))
    for k, part in enumerate(parts):
        if sess is None:
            sess = augmented_session(model_path, part, arena=True)
        what = desc if len(parts) == 1 or not desc else f"{desc} (part {k + 1}/{len(parts)})"
        _run_pass(sess, part, fresh() if fresh is not None else samples, st, total, what)
        if len(parts) > 1:
            sess = None
            _trim()
    return st


def _one_item(graph: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feeds`` as one batch item where the graph's batch axis is dynamic."""
    g = onnx.load(str(graph), load_external_data=False).graph
    inp = next((i for i in g.input if i.name == "sample"), None)
    if inp is None or inp.type.tensor_type.shape.dim[0].HasField("dim_value"):
        return feeds
    return batch_items(feeds)[0]


def tensor_shapes(graph: Path, tensors: list[str], feeds: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """Each tensor's shape for ``feeds`` by ONNX Runtime's symbolic shape inference (no weight read,
    nothing run; 0.3 s on an SD1.5 UNet); the tensors it leaves open are left out."""
    from edgeq.quantize.sensitivity import symbolic_shapes

    model = onnx.load(str(graph), load_external_data=False)
    names = {i.name for i in model.graph.input}
    return symbolic_shapes(model, {k: v for k, v in feeds.items() if k in names}, list(tensors), partial=True) or {}


def _run_pass(sess, tensors: list[str], samples: Samples, st: Stats, total: int, desc: str) -> None:
    inputs = {i.name for i in sess.get_inputs()}
    split = dynamic_batch(sess)
    calls = progress(samples, total=total, desc=desc, unit="call", knob="--calib-calls", disable=not desc)
    for step, feeds in calls:
        given = {k: v for k, v in feeds.items() if k in inputs}
        for item in batch_items(given) if split else [given]:
            outs = run_shrinking(sess, tensors, item)
            _fold(st, tensors, outs, step)
            del outs


def _fold_threads() -> int:
    return int(os.environ.get("EDGEQ_THREADS", "0")) or os.cpu_count() or 1


def _fold(st: Stats, names: list[str], arrays: list[np.ndarray], step: int) -> None:
    """One call's activations of ``names`` into their histograms at ``step``, one thread per core
    (numpy releases the GIL in the passes over the data; each histogram is filled by one thread, so
    the counts are those of one thread). The runtime is idle meanwhile: at SD1.5 size a call's 1.7 GB
    per batch item took 3.7 s on one core."""
    from concurrent.futures import ThreadPoolExecutor

    def add(k: int) -> None:
        st.hists[names[k]][step].add(arrays[k])

    order = sorted(range(len(names)), key=lambda k: -arrays[k].size)  # the largest first: even shares
    with ThreadPoolExecutor(_fold_threads()) as pool:
        futures = {k: pool.submit(add, k) for k in order}
    for k in range(len(names)):
        try:
            futures[k].result()
        except FloatingPointError:
            raise EdgeqError(
                f"tensor {names[k]} holds NaN or Inf at step {step} during calibration",
                "the FP32 model itself produces non-finite values: check the export",
            ) from None


# the share of the memory left under the ceiling (after the session's weights) that one pass's
# requested activations may take: the rest is the forward pass's own working set (an attention's
# scores and softmax, the convolutions' buffers) and the histograms
ACTIVATION_SHARE = 0.6


def plan_parts(
    sess, tensors: list[str], samples: Samples, max_bytes: int | None, desc: str = "", graph: Path | None = None
) -> list[list[str]]:
    """The tensors split into parts whose activations of one batch item fit beside the loaded graph
    under ``max_bytes`` (None: what the system has available now plus this process's resident set).

    Sizes come from the graph's symbolic shapes at the first call's input shapes (``graph``: nothing
    run, nothing held). Where those leave a tensor open, its size is predicted from two runs of the
    first call shrunk to a quarter and a sixteenth of its spatial area (``size = a * area + b *
    area**2``: convolutions and projections grow with the area, self-attention scores with its
    square) on ``sess`` (or a session made for them and dropped), so the full-size activations are
    never all held. ``sess``: the augmented session, loaded (its weights count as held), or None (the
    graph's weights are counted as they will be once loaded). Graphs whose spatial input is static or
    too small to shrink (latents under 32 x 32) and whose shapes are open are one part.
    """
    first = next(iter(samples), None)
    if first is None:
        return [list(tensors)]
    feeds = first[1]
    shapes: dict[str, list[int]] = {}
    if graph is not None:
        feeds = _one_item(graph, feeds)
        shapes = tensor_shapes(graph, tensors, feeds)
    sizes = {t: 4 * int(np.prod(shapes[t])) for t in shapes}  # float32
    if len(shapes) < len(tensors):  # open shapes: the shrunk runs
        own = sess is None
        run_on = sess if sess is not None else augmented_session(graph, tensors, arena=True)
        item = {k: v for k, v in feeds.items() if k in {i.name for i in run_on.get_inputs()}}
        if graph is None and dynamic_batch(run_on):
            item = batch_items(item)[0]
        predicted = predict_sizes(run_on, tensors, item)
        if own:
            del run_on
            _trim()
        if predicted is None:
            return [list(tensors)]
        sizes = {t: sizes[t] if t in shapes else predicted[t] for t in tensors}
    from edgeq.runtime.sessions import weight_bytes
    from edgeq.stages.memory import build_rss

    held = build_rss() + (weight_bytes(graph) if sess is None and graph is not None else 0)
    ceiling = max_bytes if max_bytes is not None else available_bytes() + build_rss()
    budget = int((ceiling - held) * ACTIVATION_SHARE)
    if budget < max(sizes.values()):
        raise EdgeqError(
            f"statistics: under a memory ceiling of {ceiling / 2**30:.1f} GB, the loaded graph ({held / 2**30:.1f} GB) "
            f"leaves no room for one call's largest calibrated tensor ({max(sizes.values()) / 2**30:.2f} GB)",
            "raise --max-memory (or free memory), or build at a smaller --height/--width",
        )
    parts = split_by_size(tensors, sizes, budget)
    if len(parts) > 1 and desc:
        total = sum(sizes.values())
        print(
            f"{desc}: one call's calibrated activations are about {total / 2**30:.1f} GB per batch item; "
            f"beside the loaded graph ({held / 2**30:.1f} GB) under {ceiling / 2**30:.1f} GB they run in "
            f"{len(parts)} passes over the calls, each with a part of the tensors (same statistics; "
            "--max-memory sets the ceiling)",
            flush=True,
        )
    return parts


def split_by_size(tensors: list[str], sizes: dict[str, int], budget: int) -> list[list[str]]:
    """Consecutive runs of ``tensors`` (graph order) whose sizes add up to at most ``budget`` each
    (a tensor larger than the budget alone is a part of its own)."""
    parts: list[list[str]] = [[]]
    used = 0
    for t in tensors:
        if parts[-1] and used + sizes[t] > budget:
            parts.append([])
            used = 0
        parts[-1].append(t)
        used += sizes[t]
    return parts


def spatial_input(sess) -> str | None:
    """The 4-D input whose height and width are dynamic (``sample``, ``latent_sample``), if any."""
    for i in sess.get_inputs():
        if len(i.shape or []) == 4 and not isinstance(i.shape[2], int) and not isinstance(i.shape[3], int):
            return i.name
    return None


def predict_sizes(sess, tensors: list[str], feeds: dict[str, np.ndarray]) -> dict[str, int] | None:
    """Bytes of each of ``tensors`` for ``feeds`` (one batch item), from runs at 1/16 and 1/4 of its
    spatial area; None where the spatial input cannot be shrunk (static, or under 32 x 32)."""
    name = spatial_input(sess)
    if name is None or name not in feeds:
        return None
    h, w = feeds[name].shape[-2:]
    if h % 32 or w % 32:
        return None
    small = []
    for f in (4, 2):
        shrunk = dict(feeds)
        shrunk[name] = np.ascontiguousarray(feeds[name][..., : h // f, : w // f])
        outs = run_shrinking(sess, tensors, shrunk)
        small.append([int(o.nbytes) for o in outs])
        del outs
    # a last small run fetching none of them: the arena gives back what the shrunk runs' outputs held
    # (else the "loaded graph" counts them: 15.1 GB against about 11 for an SDXL UNet at 1024 px)
    shrunk = dict(feeds)
    shrunk[name] = np.ascontiguousarray(feeds[name][..., : h // 4, : w // 4])
    own = [o.name for o in sess.get_outputs() if o.name not in set(tensors)]
    if own:
        run_shrinking(sess, own[:1], shrunk)
    sizes = {}
    for t, s1, s2 in zip(tensors, *small):
        quad = max(0.0, (s2 - 4 * s1) / 12)  # b * area1**2, area1 = a sixteenth of the full area
        lin = max(0.0, s1 - quad)  # a * area1
        sizes[t] = int(max(16 * lin + 256 * quad, s2) * 1.05)
    return sizes


def available_bytes() -> int:
    """What the system can give this process now (Linux MemAvailable; psutil elsewhere; else 8 GiB)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return 8 * 2**30


def _trim() -> None:
    from edgeq.runtime.sessions import release_memory

    release_memory()


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
        sess = _SESSION[key] = augmented_session(model_path, tensors, arena=True)
    total = sum(len(steps) if steps is not None else 1 for _, steps in shards)
    return collect(model_path, tensors, component_samples(cap, name, shards), timesteps, total, "", sess)


__all__ = ["BINS", "Stats", "collect"]


@dataclass
class StatsRequest:
    """What a calibration capture runs its UNet as, and which statistics it collects on the way:
    ``graph`` with ``tensors`` as extra outputs, folded on the (prompt, step) calls in ``chosen``
    (empty: none); ``result``: the statistics, set by the capture where every chosen call was folded."""

    graph: Path
    tensors: list[str]
    chosen: set[tuple[int, int]]
    max_bytes: int | None = None
    result: Stats | None = None


class CaptureStats:
    """The FP32 UNet of a calibration capture (:class:`StatsRequest`): a runner (``run``) that folds the
    calibrated tensors of the chosen calls into per-step histograms as the capture goes, so the
    statistics cost no second pass of the FP32 UNet. Every call runs one batch item at a time (the
    classifier-free-guidance pair as two calls).

    It holds one ONNX Runtime session at a time, unoptimised (see :func:`augmented_session`: the same
    numbers whichever tensors are outputs, so a trajectory is the same whether or not its calls are
    folded, for every target, on one machine or a cluster): the graph with the tensors as extra
    outputs while they fit, else the plain graph. The first call
    checks the memory ceiling (:func:`plan_parts`, from two shrunk runs); where one call's tensors
    would need more than one pass, the augmented graph (which holds every extra output of a call, also
    unfetched ones) is dropped before any full-size call, nothing is folded and ``complete`` is False
    (the statistics are then collected after the capture, from the captured calls, in parts).

    ``begin(prompt)`` before each prompt's trajectory (steps are counted from there).
    """

    def __init__(self, req: StatsRequest, steps: int):
        self.graph = req.graph
        self.tensors = list(req.tensors)
        self.chosen = set(req.chosen)
        self.max_bytes = req.max_bytes
        self.fits: bool | None = None if self.chosen else False  # decided on the first call
        # the session is made on the first call, once its shapes say whether the tensors fit
        # (:func:`plan_parts`); with nothing to fold, the plain graph now
        self.session = augmented_session(req.graph, [], arena=True) if self.fits is False else None
        g = onnx.load(str(req.graph), load_external_data=False).graph
        names = set(self.tensors)
        inits = {i.name for i in g.initializer}
        self.outputs = [o.name for o in g.output if o.name not in names]
        self.input_names = [i.name for i in g.input if i.name not in inits]
        sample = next((i for i in g.input if i.name == "sample"), None)
        self.split = sample is not None and not sample.type.tensor_type.shape.dim[0].HasField("dim_value")
        self.stats = Stats(self.tensors, [0.0] * steps, {t: [Hist.empty() for _ in range(steps)] for t in self.tensors})
        self.folded: set[tuple[int, int]] = set()
        self.prompt, self.step = -1, 0

    def begin(self, prompt: int) -> None:
        self.prompt, self.step = prompt, 0

    def reset(self, chosen: set[tuple[int, int]]) -> None:
        """Start afresh with other chosen calls (a cluster worker's next capture task)."""
        steps = len(self.stats.timesteps)
        self.chosen, self.folded = set(chosen), set()
        self.stats = Stats(self.tensors, [0.0] * steps, {t: [Hist.empty() for _ in range(steps)] for t in self.tensors})

    def _decide(self, given: dict[str, np.ndarray]) -> None:
        try:
            self.fits = len(plan_parts(None, self.tensors, [(0, given)], self.max_bytes, graph=self.graph)) == 1
        except EdgeqError:  # not beside the whole pipeline: the statistics' own pass decides
            self.fits = False
        # where they do not fit, the plain graph: no call's activations held as outputs
        self.session = augmented_session(self.graph, self.tensors if self.fits else [], arena=True)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        given = {k: v for k, v in feeds.items() if k in self.input_names}
        call = (self.prompt, self.step)
        self.step += 1
        if self.fits is None:
            self._decide(given)
        fold = call in self.chosen and bool(self.fits)
        step = call[1]
        if fold:
            self.stats.timesteps[step] = float(given["timestep"])
        wanted = self.outputs + (self.tensors if fold else [])
        outs: list[list[np.ndarray]] = [[] for _ in self.outputs]
        for item in batch_items(given) if self.split else [given]:
            res = run_shrinking(self.session, wanted, item)
            for k in range(len(self.outputs)):
                outs[k].append(np.array(res[k]))  # a copy: an output keeps the whole arena alive
            if fold:
                _fold(self.stats, self.tensors, res[len(self.outputs) :], step)
            del res
        if fold:
            self.folded.add(call)
        return {n: np.concatenate(o) if len(o) > 1 else o[0] for n, o in zip(self.outputs, outs)}

    def partial(self) -> tuple[Stats | None, set[tuple[int, int]]]:
        """The statistics of the calls folded here and those calls (None where the tensors did not fit)."""
        return (None, set()) if self.fits is False else (self.stats, set(self.folded))


def merge_partials(req: StatsRequest, partials: list[tuple[Stats | None, set]], timesteps: list[float]) -> None:
    """``req.result``: the partial statistics of a capture's runners merged (exact, in any order),
    where together they folded every chosen call; else left None."""
    if not req.chosen or any(st is None for st, _ in partials):
        return
    if set().union(*(f for _, f in partials)) != req.chosen:
        return
    total = Stats(list(req.tensors), list(timesteps), {t: [Hist.empty() for _ in timesteps] for t in req.tensors})
    total.merge_in(st for st, _ in partials if st is not None)
    req.result = total
