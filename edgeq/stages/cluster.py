"""Capture and statistics on a Ray cluster (``--cluster``): the same shards, the same statistics.

Capture is sharded per prompt and seeded (seed + prompt index), and per-step histograms merge
exactly in any order (integer counts, exact bin-pair merges, min/max), so calibration maps onto Ray
tasks and a reduction without changing a number:

* **capture**: one task per missing prompt shard; each writes its shard file atomically into the
  capture folder, exactly as the single-process loop does. A retried task rewrites the same file.
* **statistics**: one task per chunk of prompt shards; each returns the partial per-step histograms
  of its calls through Ray's object store, and the driver merges them.

Where things live: shards and the FP32 export are files in the build cache, which every node reads
and writes at the same path. On one machine that is simply true; a multi-node cluster needs the
cache folder on a shared filesystem (NFS, a mounted bucket) at the same path on every node, which
:meth:`RayCluster.check_shared` verifies on every node before any work. Partial statistics travel
through the object store. Workers need edgeq (with its runtime, not torch) installed at the same
version. Ray is imported only when ``--cluster`` asks for it.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq.errors import EdgeqError

INSTALL = "pip install 'edgeq[ray]'"
RETRIES = 3  # a task whose worker dies is run again (Ray's task retries), up to this many times


@dataclass(frozen=True)
class ClusterSpec:
    """Where to run: ``local`` (a Ray instance started on this machine), an address of a running
    cluster this machine belongs to (``HOST:PORT``), or a Ray Client address (``ray://HOST:PORT``)."""

    address: str | None  # None: start a local Ray with this machine's cores

    def describe(self) -> str:
        return "a local Ray instance" if self.address is None else f"the Ray cluster at {self.address}"

    @classmethod
    def parse(cls, value: str) -> ClusterSpec:
        v = value.strip()
        if v == "ray":
            return cls(None)
        if v == "auto" or v.startswith("ray://") or _host_port(v) is not None:
            return cls(v)
        raise EdgeqError(
            f"--cluster {value!r} is not a cluster",
            "give `ray` (local Ray on this machine), HOST:PORT of a running cluster, or ray://HOST:PORT",
        )


def _host_port(v: str) -> tuple[str, int] | None:
    host, sep, port = v.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host, int(port)


def _reachable(address: str, timeout: float = 5.0) -> str | None:
    """None if a TCP connection to the address opens, else why not."""
    hp = _host_port(address)
    if hp is None:
        return None  # "auto": Ray finds it
    try:
        with socket.create_connection(hp, timeout=timeout):
            return None
    except OSError as e:
        return e.strerror or type(e).__name__


class RayCluster:
    """A connection to Ray for one build; :meth:`close` disconnects (and stops a local instance)."""

    def __init__(self, spec: ClusterSpec, log: Callable[[str], None] = print):
        try:
            import ray
        except ImportError:
            raise EdgeqError("--cluster needs Ray, which is not installed", INSTALL) from None
        self.ray = ray
        self.spec = spec
        self.log = log
        if spec.address is not None:
            why = _reachable(spec.address)
            if why is not None:
                raise EdgeqError(
                    f"cannot reach the Ray cluster at {spec.address} ({why})",
                    "start one with `ray start --head` (workers: `ray start --address HEAD:6379`), "
                    "or give its address; `--cluster ray` starts a local one",
                )
        kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR", "configure_logging": True}
        env = {"env_vars": {"EDGEQ_THREADS": os.environ.get("EDGEQ_THREADS", "1"), "PYTHONWARNINGS": "ignore"}}
        try:
            if spec.address is None:
                # "local": a new instance even where `ray start` already runs one (ray.init() would join it)
                ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, runtime_env=env, **kwargs)
            else:
                ray.init(address=spec.address, runtime_env=env, **kwargs)
        except Exception as e:  # Ray raises ConnectionError, RuntimeError, ... with long messages
            raise EdgeqError(
                f"cannot connect to {spec.describe()}: {str(e).splitlines()[0][:200]}",
                "check the address and that the cluster runs the same Ray and Python versions",
            ) from None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = max(cpus, 1)
        log(f"cluster: {spec.describe()}, {len(self.nodes())} node(s), {cpus} CPUs")

    def nodes(self) -> list[dict]:
        return [n for n in self.ray.nodes() if n.get("Alive")]

    def close(self) -> None:
        if self.ray.is_initialized():
            self.ray.shutdown()

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- shared storage ------------------------------------------------------------------------------
    def check_shared(self, folder: Path) -> None:
        """Every node sees ``folder`` at the same path (shards and the export are files there)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        folder.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        probe = folder / f".cluster-probe-{token}"
        probe.write_text(token)
        try:
            refs = {
                n["NodeManagerAddress"]: _probe.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
                ).remote(str(probe))
                for n in self.nodes()
                if n.get("Resources", {}).get("CPU", 0) > 0
            }
            for node, ref in refs.items():
                if self.ray.get(ref) != token:
                    raise EdgeqError(
                        f"node {node} of the cluster cannot read {folder}",
                        "a multi-node cluster needs the build cache on a filesystem every node mounts at the "
                        "same path (give --cache-dir on it), or run on one machine with --cluster ray",
                    )
        finally:
            probe.unlink(missing_ok=True)

    # -- work --------------------------------------------------------------------------------------------
    def map(self, fn, args: list[tuple], desc: str, unit: str) -> list[Any]:
        """``fn.remote(*a)`` for every ``a``, results in order, one progress bar over all workers."""
        from tqdm import tqdm

        refs = [fn.options(max_retries=RETRIES).remote(*a) for a in args]
        index = {r: i for i, r in enumerate(refs)}
        out: list[Any] = [None] * len(refs)
        pending = list(refs)
        with tqdm(total=len(refs), desc=desc, unit=unit) as bar:
            while pending:
                done, pending = self.ray.wait(pending, num_returns=1)
                for r in done:
                    try:
                        out[index[r]] = self.ray.get(r)
                    except self.ray.exceptions.RayTaskError as e:
                        cause = e.cause if isinstance(getattr(e, "cause", None), EdgeqError) else None
                        if cause is not None:
                            raise cause from None
                        raise
                    bar.update(1)
        return out

    def capture(self, build: Path, folder: Path, settings, todo: list[int], desc: str, stats=None) -> list:
        """The missing shards ``todo`` of a capture, one task each, written into ``folder``; with
        ``stats`` (:class:`edgeq.calibrate.collect.StatsRequest`) each task runs the UNet as the
        single-process capture does and returns its partial statistics (the list returned)."""
        from dataclasses import asdict

        self.check_shared(folder)
        s = asdict(settings)
        req = None if stats is None else {**asdict(stats), "graph": str(stats.graph), "result": None}
        args = [(str(build), str(folder), s, i, req) for i in todo]
        done = self.map(_capture_task, args, f"{desc} ({self.workers} workers)", "prompt")
        return [] if stats is None else [d[1] for d in done]

    def statistics(self, path: Path, tensors: list[str], cap, name: str, limit: int | None, desc: str):
        """Per-step histograms of ``tensors`` over the capture's calls: partials per chunk of calls
        (Ray's object store), merged on the driver; merges are exact and order-free. Chunks are made of
        calls, not prompts: full-size models calibrate on few prompts (2 by default), and tasks per
        prompt would leave every worker past the second idle."""
        from edgeq.calibrate.collect import Stats, shard_plan
        from edgeq.calibrate.histogram import Hist

        self.check_shared(cap.folder)
        shards, timesteps = shard_plan(cap, name, limit)
        units = [(i, [s]) for i, steps in shards for s in steps] if name == "unet" else shards
        n_tasks = min(len(units), 2 * self.workers)
        chunks = [_by_shard(units[k::n_tasks]) for k in range(n_tasks)]
        args = [(str(path), list(tensors), cap.to_dict(), name, c, timesteps) for c in chunks]
        parts = self.map(_stats_task, args, f"{desc} ({self.workers} workers)", "task")
        t0 = time.perf_counter()
        total = Stats(list(tensors), timesteps, {t: [Hist.empty() for _ in timesteps] for t in tensors})
        total.merge_in(parts)
        self.log(f"{desc}: {len(parts)} partials merged on the driver in {time.perf_counter() - t0:.2f} s")
        return total


def _by_shard(units: list[tuple[int, list[int] | None]]) -> list[tuple[int, list[int] | None]]:
    """Calls of a chunk grouped by prompt shard (each shard file read once per task)."""
    out: dict[int, list[int] | None] = {}
    for i, steps in units:
        out[i] = None if steps is None else [*(out.get(i) or []), *steps]
    return sorted(out.items())


# -- the tasks: plain functions made remote on first use (Ray is imported only with --cluster) ------
_SESSIONS: dict[tuple, Any] = {}  # per worker process: sessions reused across tasks


def _drop(sessions: dict) -> None:
    """Free what the worker's other kind of task keeps (capture: the FP32 pipeline in ``_SESSIONS``;
    statistics: the augmented UNet session in ``collect._SESSION``), so that a worker never holds two
    copies of the weights. At SD1.5 size each is 7-9 GB: a worker that kept its capture pipeline into
    the statistics held 16 GB."""
    import gc

    if sessions:
        sessions.clear()
        gc.collect()


def _remote(fn):
    import ray

    return ray.remote(fn)


class _Lazy:
    def __init__(self, fn):
        self.fn, self._r = fn, None

    def options(self, **kw):
        if self._r is None:
            self._r = _remote(self.fn)
        return self._r.options(**kw)


def _probe_impl(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _capture_impl(build: str, folder: str, settings: dict, i: int, req: dict | None = None):
    """Prompt ``i``'s shard; with ``req`` (a StatsRequest as a dict), its UNet runs as the
    single-process capture's does, and the task returns (i, (partial statistics, calls folded))."""
    from edgeq.calibrate import collect
    from edgeq.calibrate.capture import CaptureSettings, capture_pipeline, capture_shard

    _drop(collect._SESSION)
    s = CaptureSettings(**{**settings, "prompts": tuple(settings["prompts"])})
    stats = None
    if req is not None:
        stats = collect.StatsRequest(
            Path(req["graph"]), list(req["tensors"]), {tuple(c) for c in req["chosen"]}, req["max_bytes"]
        )
    key = ("pipeline", build, None if stats is None else (str(stats.graph), tuple(stats.tensors)))
    if key not in _SESSIONS:
        _SESSIONS.clear()  # one model at a time per worker
        _SESSIONS[key] = capture_pipeline(Path(build), s, stats)
    pipe = _SESSIONS[key]
    unet = pipe.runner("unet")
    if isinstance(unet, collect.CaptureStats):
        unet.reset(stats.chosen if stats is not None else set())
        unet.begin(i)
    capture_shard(pipe, s, i, Path(folder))
    return (i, unet.partial()) if isinstance(unet, collect.CaptureStats) else i


def _stats_impl(path: str, tensors: list[str], cap: dict, name: str, shards: list, timesteps: list[float]):
    from edgeq.calibrate.capture import Capture
    from edgeq.calibrate.collect import collect_shards

    _drop(_SESSIONS)
    return collect_shards(Path(path), tensors, Capture.from_dict(cap), name, shards, timesteps, reuse=True)


_probe = _Lazy(_probe_impl)
_capture_task = _Lazy(_capture_impl)
_stats_task = _Lazy(_stats_impl)


def connect(value: str | None, log=print) -> AbstractContextManager[RayCluster | None]:
    """``with connect(opts.cluster) as cluster``: the build's Ray connection (None: no cluster),
    closed (a local instance stopped) when the block ends."""
    return nullcontext(None) if value is None else RayCluster(ClusterSpec.parse(value), log)
