"""Calibration on a Ray cluster: a local Ray started and stopped by the test, byte-identical results,
a worker killed mid-capture, an unreachable address, and Ray imported only when asked for."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import cli

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'edgeq[ray]' (the dev extra has it)")

ARGS = ("--num-calib", "8", "--num-heldout", "1", "--groups", "2")
TOKEN = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": __import__("uuid").uuid4().hex}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head` with 2 CPUs on this machine, stopped (with its workers) after the tests."""
    ray_bin = Path(sys.executable).with_name("ray")
    exe = [str(ray_bin)] if ray_bin.is_file() else [sys.executable, "-m", "ray.scripts.scripts"]
    port = _free_port()
    # the cluster's token (Ray >= 2.59 authenticates by default): the same one for the head and the build
    env = {**os.environ, **TOKEN, "RAY_USAGE_STATS_ENABLED": "0"}
    start = [*exe, "start", "--head", "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false"]
    r = subprocess.run(start, capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([*exe, "stop", "--force"], capture_output=True, env=env, timeout=120)


def _with_export(cache: Path, shared: Path) -> Path:
    """A fresh cache folder holding the session's tiny-sd export where it exists (capture and
    statistics are this test's own)."""
    cache.mkdir(parents=True)
    if (shared / "fp32").is_dir():
        shutil.copytree(shared / "fp32", cache / "fp32")
    return cache


def _stats_arrays(cache: Path) -> dict[str, bytes]:
    out = {}
    for f in sorted(cache.glob("stats-*.npz")):
        with np.load(f) as z:
            out[f.name] = b"".join(z[k].tobytes() for k in sorted(z.files))
    return out


def _ray_workers(pattern: str) -> list[int]:
    r = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


def test_cluster_calibration_is_identical_and_survives_a_killed_worker(ray_head, tmp_path, tiny_sd_cache):
    """Single process and the cluster (one worker killed mid-capture) give the same statistics and plan."""
    single, clustered = tmp_path / "single", tmp_path / "cluster"
    for d in (single, clustered):
        _with_export(d, tiny_sd_cache)
    r = cli("quantize", "tiny-sd", *ARGS, "--out", str(tmp_path / "q1"), "--cache-dir", str(single))
    assert r.returncode == 0, r.stderr[-3000:]

    killed: list[int] = []

    def killer() -> None:  # SIGKILL the first worker seen running a capture task
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            pids = _ray_workers("ray::_capture_impl")
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.02)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    r = cli(
        "quantize",
        "tiny-sd",
        *ARGS,
        "--cluster",
        ray_head,
        "--out",
        str(tmp_path / "q2"),
        "--cache-dir",
        str(clustered),
        env=TOKEN,
    )
    t.join(timeout=1)
    assert r.returncode == 0, r.stderr[:1500] + r.stderr[-1500:]
    assert killed, "no capture task was seen running, so none was killed"
    assert "cluster: the Ray cluster at" in r.stdout + r.stderr
    a, b = _stats_arrays(single), _stats_arrays(clustered)
    assert a and a.keys() == b.keys() and a == b  # the same cache keys, the same numbers
    caps = sorted(p.name for p in single.glob("capture-*"))
    assert caps == sorted(p.name for p in clustered.glob("capture-*"))
    for c in caps:
        for shard in sorted((single / c).glob("shard-*.npz")):
            with np.load(shard) as x, np.load(clustered / c / shard.name) as y:
                assert x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files), shard
    plan1 = (tmp_path / "q1" / "quant_plan.json").read_bytes()
    assert plan1 == (tmp_path / "q2" / "quant_plan.json").read_bytes()
    # the single-process command reuses the cluster's cache: same keys, same files
    r = cli("calibrate", "tiny-sd", *ARGS, "--cache-dir", str(clustered))
    assert r.returncode == 0 and "capture calibration" not in r.stderr, r.stderr[-2000:]


def test_local_ray_and_stats_merge_exactly(tmp_path, tiny_sd_cache):
    """`--cluster ray` starts (and stops) a local Ray; its statistics equal the single-process ones."""
    cache = _with_export(tmp_path / "c", tiny_sd_cache)
    args = ("--num-calib", "4", "--num-heldout", "1", "--calib-calls", "40", "--cache-dir", str(cache))
    r = cli("calibrate", "tiny-sd", "--cluster", "ray", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cluster: a local Ray instance" in r.stdout + r.stderr
    clustered = _stats_arrays(cache)
    for f in cache.glob("stats-*.npz"):
        f.unlink()
    r = cli("calibrate", "tiny-sd", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _stats_arrays(cache) == clustered


def test_unreachable_cluster_is_one_line(tmp_path):
    port = _free_port()  # nothing listens there
    t0 = time.time()
    r = cli("calibrate", "tiny-sd", "--cluster", f"127.0.0.1:{port}", "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) <= 2  # the message and its fix
    assert time.time() - t0 < 60
    r = cli("calibrate", "tiny-sd", "--cluster", "nowhere", "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 2 and "is not a cluster" in r.stderr


def test_ray_is_imported_only_with_cluster():
    code = (
        "import sys; from edgeq.cli.main import main; main(['build', 'tiny-sd', '--print-config']); "
        "from edgeq.build import print_config; sys.exit(3 if 'ray' in sys.modules else 0)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout)["plan"]["model"] == "tiny-sd"
