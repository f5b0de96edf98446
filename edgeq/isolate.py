"""Run a memory-heavy step in a child process, so the memory it touched goes back to the system.

glibc and the runtimes (torch, ONNX Runtime) keep much of what a large step allocated after it
returns. A spawned child gives it all back when it exits, so a build's peak is its largest stage,
not the sum of its stages. The child's EdgeqError reaches the caller as the same EdgeqError; its
return value comes back pickled.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeq.errors import EdgeqError


def _child(fn: Callable, args: tuple, kwargs: dict, result: str, err: str, root: str) -> None:
    from edgeq.stages.memory import ROOT_ENV

    os.environ[ROOT_ENV] = root  # memory ceilings count the whole build, not this child alone
    try:
        value = fn(*args, **kwargs)
    except EdgeqError as e:
        Path(err).write_text(json.dumps({"message": e.message, "hint": e.hint}))
        raise SystemExit(2) from None
    with open(result, "wb") as f:
        pickle.dump(value, f)


def run_isolated(what: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a spawned child process (``fn`` importable by name); ``what`` names
    the step in the error raised when the child dies."""
    import multiprocessing

    from edgeq.stages.memory import ROOT_ENV

    with tempfile.TemporaryDirectory(prefix="edgeq-isolated-") as tmp:
        result, err = os.path.join(tmp, "result.pkl"), os.path.join(tmp, "error.json")
        proc = multiprocessing.get_context("spawn").Process(
            target=_child, args=(fn, args, kwargs, result, err, os.environ.get(ROOT_ENV) or str(os.getpid()))
        )
        proc.start()
        proc.join()
        if os.path.exists(err):
            e = json.loads(Path(err).read_text())
            raise EdgeqError(e["message"], e["hint"])
        if proc.exitcode is not None and proc.exitcode < 0:
            sig = signal.Signals(-proc.exitcode).name
            raise EdgeqError(
                f"{what} was killed ({sig}) in its child process",
                "SIGKILL is usually the kernel's out-of-memory killer: free memory, or lower the settings "
                "the build estimate names (fewer calls, a smaller resolution)"
                if sig == "SIGKILL"
                else "see the output above",
            )
        if proc.exitcode != 0 or not os.path.exists(result):
            raise RuntimeError(f"{what} failed in a child process (exit code {proc.exitcode}); its output is above")
        with open(result, "rb") as f:
            return pickle.load(f)


def is_large(graph: Path) -> bool:
    """Whether a step on this ONNX graph runs in a child process: over 1 GiB of weights
    (:data:`edgeq.runtime.sessions.LARGE_GRAPH_BYTES`). ONNX Runtime's quantizer
    holds the FP32 model, its shape-inferred copy and the Q/DQ model, and what it touched stays in the
    process: an SDXL UNet's second group graph took the build from 12 to 23.5 GB, and the kernel
    killed it. A child gives it all back when it exits."""
    from edgeq.runtime.sessions import LARGE_GRAPH_BYTES, weight_bytes

    return weight_bytes(graph) > LARGE_GRAPH_BYTES


def run_for_graph(graph: Path, what: str, fn: Callable, *args: Any, isolate: bool | None = None) -> Any:
    """``fn(*args)`` on the graph at ``graph``: in a child process (:func:`run_isolated`) where the
    graph is large (:func:`is_large`) or ``isolate`` says so, else here."""
    if isolate if isolate is not None else is_large(graph):
        return run_isolated(what, fn, *args)
    return fn(*args)
