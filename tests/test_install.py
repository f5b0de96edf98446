"""A non-editable install (``pip install .``) into a fresh environment finds its own profiles, prompt
sets and tiny-sd weights, and builds tiny-sd from another directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_non_editable_install_builds_from_another_directory(tmp_path, tiny_sd_cache):
    src = tmp_path / "src"  # a copy: pip builds in the source tree, which must stay clean
    shutil.copytree(ROOT / "edgeq", src / "edgeq", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / f, src / f)
    # the wheel pip would install, built offline with this interpreter's setuptools (the dev extra's)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w"]
    r = subprocess.run([*pip, str(wheels), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    wheel = next(wheels.glob("edgeq-*.whl"))
    venv = tmp_path / "venv"
    # the environment's dependencies (onnxruntime, torch, ...) come from this interpreter; edgeq itself does not
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    r = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    where = subprocess.run(
        [str(py), "-c", "import edgeq, edgeq.data as d; print(edgeq.__file__); print(d.profiles_dir())"],
        cwd=work, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    assert all(str(venv) in line for line in where.stdout.split()), where.stdout  # not the editable checkout
    edgeq = venv / "bin" / "edgeq"
    r = subprocess.run([str(edgeq), "targets"], cwd=work, capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "ort-mobile-qnn" in r.stdout, r.stderr
    r = subprocess.run(
        # the session's cache: the export is the same; the prompt files read are the installed ones
        [str(edgeq), "build", "--target", "ort-cpu", "tiny-sd", "--num-calib", "2", "--num-heldout", "1", "--groups", "1",
         "--cache-dir", str(tiny_sd_cache)],
        cwd=work, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = work / "build" / "tiny-sd-ort-cpu"
    assert (out / "report.json").is_file() and (out / "quant_plan.json").is_file()
    assert str(venv) in (out / "manifest.json").read_text()  # the prompt files it used are the installed ones
