"""The TensorRT target's contract, without a build: its class, its options, lazy imports."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgeq.targets.base import Target
from edgeq.targets.tensorrt import TARGET, TensorRtTarget
from edgeq.targets.tensorrt.options import TrtOptions


def test_target_class_describes_an_engine_target():
    assert TARGET is TensorRtTarget and issubclass(TARGET, Target)
    assert (TARGET.name, TARGET.runtime, TARGET.section) == ("tensorrt", "tensorrt", "tensorrt")
    assert TARGET.Options is TrtOptions
    assert TARGET.compiles_on_device and not TARGET.needs_runtime_to_build
    assert "edgeq[tensorrt]" in TARGET.install


def test_options_describe_themselves_and_check_across_fields():
    meta = {f.name: f.metadata for f in fields(TrtOptions)}
    assert all(m.get("help") for m in meta.values())
    assert meta["float_precision"]["choices"] == ("fp16", "fp32") and meta["batch"]["min"] == 1
    assert TrtOptions().check() is None
    assert "batch must be" in TrtOptions(batch=(2, 1, 4)).check()
    assert "resolution_scale" in TrtOptions(resolution_scale=(1.0, 0.5, 2.0)).check()


def test_options_come_from_the_validated_section_or_the_raw_one():
    validated = TrtOptions(workspace_gib=2.0)
    assert TensorRtTarget(SimpleNamespace(target_options=validated))._opts() is validated
    raw = SimpleNamespace(runtime_options={"batch": [1, 2, 2]}, path=Path("p.toml"))
    assert TensorRtTarget(raw)._opts().batch == (1, 2, 2)
    assert TensorRtTarget(None)._opts(SimpleNamespace(profile=raw)).batch == (1, 2, 2)
    with pytest.raises(Exception, match=r"p.toml: \[tensorrt\] batch must be"):
        TensorRtTarget(SimpleNamespace(runtime_options={"batch": [3, 2, 1]}, path=Path("p.toml")))._opts()


def test_importing_the_target_imports_neither_tensorrt_nor_onnx():
    code = (
        "import sys, edgeq.targets.tensorrt as t; t.TARGET(); "
        "sys.exit(any(m.split('.')[0] in ('tensorrt', 'cuda', 'onnx', 'onnxruntime') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_engines_command_refuses_a_target_that_compiles_nothing(tmp_path, capsys):
    import json
    import tomllib

    from edgeq.cli.main import main
    from edgeq.data import profiles_dir

    raw = tomllib.loads((profiles_dir() / "ort-cpu.toml").read_text())
    manifest = {"format": 1, "target": "ort-cpu", "quantization": {"profile": raw}, "components": {}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert main(["engines", str(tmp_path)]) == 2
    assert "built for the ort-cpu target, which compiles nothing on the device" in capsys.readouterr().err
