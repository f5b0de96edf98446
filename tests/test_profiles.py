"""Target profiles: the schema validator, ``extends`` and its merge, the shipped profiles resolved,
and every profile mistake failing fast through the real CLI (exit 2, key named, nothing exported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx
import pytest

from edgeq.data import profiles_dir
from edgeq.errors import EdgeqError
from edgeq.profiles import (
    ComponentPolicy,
    Exclusion,
    load_profile,
    merge,
    profile_from_manifest,
    profile_names,
)
from edgeq.profiles.schema import Where, validate
from edgeq.targets import target_class

SHIPPED = ("openvino", "ort-cpu", "ort-mobile", "ort-mobile-qnn", "tensorrt")
# Captured before profiles could extend: each shipped TOML of HEAD 4b0dc09 loaded with the old loader
# (edgeq/quantize/profile.py), as JSON. The resolved profiles must stay exactly these.
GOLDEN = Path(__file__).parent / "golden" / "profiles_resolved.json"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def check(cls, raw, section="s"):
    return validate(cls, raw, Where(Path("p.toml"), section))


# -- the schema validator ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Inner:
    pattern: str
    weight: float = 1.0


@dataclass(frozen=True)
class Sample:
    flag: bool = False
    count: int = field(default=1, metadata={"min": 1, "max": 8, "help": "how many"})
    ratio: float = field(default=0.5, metadata={"above": 0.0, "below": 1.0})
    mode: str = field(default="a", metadata={"choices": ("a", "b")})
    lazy: str = field(default="x", metadata={"choices": lambda: ("x", "y")})
    maybe: int | None = None
    names: tuple[str, ...] = ()
    alphas: tuple[float, ...] = field(default=(), metadata={"min": 0.0, "max": 1.0})
    triple: tuple[int, int, int] = (1, 2, 3)
    table: dict[str, dict[str, str]] = field(default_factory=dict)
    anything: dict = field(default_factory=dict)
    inner: tuple[Inner, ...] = ()

    def check(self) -> str | None:
        return "count must not exceed 4 when flag is set" if self.flag and self.count > 4 else None


def test_validator_converts_and_types():
    assert check(Sample, {"count": 1}).count == 1 and check(Sample, {"maybe": None}).maybe is None
    assert check(Sample, {"alphas": [0, 1]}).alphas == (0.0, 1.0)  # an int is a number
    s = check(
        Sample,
        {
            "flag": True,
            "count": 3,
            "mode": "b",
            "lazy": "y",
            "maybe": 5,
            "names": ["a", "b"],
            "alphas": [0, 1],
            "triple": [4, 5, 6],
            "table": {"QNN": {"k": "v"}},
            "anything": {"x": [1]},
            "inner": [{"pattern": "^/a/"}, {"pattern": "b", "weight": 2}],
        },
    )
    assert isinstance(s.alphas[0], float) and s.mode == "b" and s.lazy == "y"
    assert s.names == ("a", "b") and s.alphas == (0.0, 1.0) and s.triple == (4, 5, 6)
    assert s.inner == (Inner("^/a/"), Inner("b", 2.0)) and isinstance(s.inner[1].weight, float)
    assert s.table == {"QNN": {"k": "v"}} and s.maybe == 5
    assert check(Sample, {}) == Sample()


@pytest.mark.parametrize(
    ("raw", "message", "hint"),
    [
        ({"flag": 1}, "[s] flag = 1: is not true or false", "flag: true or false"),
        ({"count": True}, "[s] count = true: is not an integer", "an integer >= 1 and <= 8 (how many)"),
        ({"count": 1.5}, "[s] count = 1.5: is not an integer", "count:"),
        ({"count": 0}, "[s] count = 0: is out of range", "count: an integer >= 1 and <= 8"),
        ({"count": 9}, "[s] count = 9: is out of range", "<= 8"),
        ({"ratio": "0.5"}, '[s] ratio = "0.5": is not a number', "ratio: a number > 0.0 and < 1.0"),
        ({"ratio": 1.0}, "[s] ratio = 1.0: is out of range", "< 1.0"),
        ({"mode": "c"}, '[s] mode = "c": is not allowed', "mode: one of a, b"),
        ({"lazy": "z"}, '[s] lazy = "z": is not allowed', "lazy: one of x, y"),
        ({"maybe": "1"}, '[s] maybe = "1": is not an integer', "maybe: an integer"),
        ({"names": "a"}, '[s] names = "a": is not a list of strings', "names: a list of strings"),
        ({"names": ["a", 2]}, "[s] names[1] = 2: is not a string", "names[1]: a string"),
        ({"alphas": [0.5, 2]}, "[s] alphas[1] = 2: is out of range", "<= 1.0"),
        ({"triple": [1, 2]}, "[s] triple = [1, 2]: has 2 values, not 3", "a list of 3 integers"),
        ({"table": {"QNN": {"k": 1}}}, "[s] table.QNN.k = 1: is not a string", None),
        ({"table": []}, "[s] table = []: is not a table", "table: a table"),
        ({"inner": [{"weight": 1}]}, "[s] inner[0]: has no pattern", "pattern: a string"),
        ({"inner": [{"pattern": "a", "wieght": 1}]}, "[s] inner[0] wieght: unknown key", "did you mean 'weight'?"),
        ({"inner": ["a"]}, '[s] inner = "a": is not a table', None),
        ({"cuont": 2}, "[s] cuont: unknown key", "did you mean 'count'? known keys: flag, count, ratio"),
        ({"flag": True, "count": 5}, "[s]: count must not exceed 4 when flag is set", "count: an integer"),
    ],
)
def test_validator_names_file_section_key_value(raw, message, hint):
    with pytest.raises(EdgeqError) as e:
        check(Sample, raw)
    assert e.value.message == f"p.toml: {message}"
    if hint:
        assert hint in e.value.hint


def test_component_policy_rules():
    pol = check(ComponentPolicy, {"mode": "int8", "op_types": ["Conv"], "smoothquant_alphas": [0.5]}, "unet")
    assert pol.op_types == ("Conv",) and pol.smoothquant_alphas == (0.5,)
    assert check(ComponentPolicy, {"mode": "int8", "range_method": "auto"}).range_method == "auto"  # lazy choices
    cases = [
        ({}, "[unet]: has no mode", "mode: one of int8, float"),
        ({"mode": "int4"}, '[unet] mode = "int4": is not allowed', "one of int8, float"),
        ({"mode": "int8", "activation_type": "fp8"}, "activation_type", "uint8, int8, uint16, int16"),
        ({"mode": "int8", "weight_type": "uint4"}, "weight_type", "uint8, int8, uint16, int16"),
        ({"mode": "int8", "range_method": "mse2"}, "range_method", "minmax, percentile, mse, entropy, auto"),
        ({"mode": "int8", "activation_matmul": "int4"}, "activation_matmul", "one of float, int8"),
        ({"mode": "int8", "smoothquant_alphas": [0.5, 1.0]}, "smoothquant_alphas[1] = 1.0", "> 0.0 and < 1.0"),
        ({"mode": "int8", "max_float_mac_share": 1.5}, "max_float_mac_share = 1.5", ">= 0.0 and <= 1.0"),
        ({"mode": "int8", "goal_sqnr_db": "30"}, 'goal_sqnr_db = "30": is not a number', "a number"),
        ({"mode": "int8", "op_types": ["Conv"], "per_channel_op_types": ["MatMul"]}, "per_channel_op_types", None),
        (
            {"mode": "int8", "exclude": [{"pattern": "c", "reason": " "}]},
            "exclude[0]: exclusion 'c' has no reason",
            None,
        ),
        ({"mode": "int8", "exclude": [{"reason": "x"}]}, "exclude[0]: has no pattern", None),
        ({"mode": "int8", "exclude": [{"pattern": "(", "reason": "x"}]}, "not a valid regular expression", None),
        ({"mode": "int8", "bogus": 1}, "[unet] bogus: unknown key", "known keys: mode, reason"),
        ({"mode": "int8", "float_op_types": ["MatMul"]}, "float_op_types needs a float_reason", "float_reason"),
        (
            {"mode": "int8", "by_family": {"x86-novnni": {"float_op_types": ["MatMul"], "float_reason": ""}}},
            "[unet] by_family.x86-novnni: float_op_types needs a float_reason",
            None,
        ),
        ({"mode": "int8", "by_family": {"x86-avx": {}}}, "by_family names ['x86-avx'], not CPU families", None),
        ({"mode": "int8", "by_family": {"host": {}}}, "by_family names ['host']", None),
        ({"mode": "int8", "by_family": {"arm": {"float_ops": []}}}, "float_ops: unknown key", "float_op_types"),
        (
            {"mode": "int8", "by_family": {"x86-vnni": {"activation_symmetric": True}}},
            "[unet] by_family.x86-vnni: activation_symmetric need a flavour_reason",
            None,
        ),
        (
            {"mode": "int8", "by_family": {"x86-vnni": {"activation_type": "int4", "flavour_reason": "x"}}},
            "activation_type",
            "uint8, int8, uint16, int16",
        ),
    ]
    for raw, message, hint in cases:
        with pytest.raises(EdgeqError) as e:
            check(ComponentPolicy, raw, "unet")
        assert message in e.value.message, (raw, e.value.message)
        if hint:
            assert hint in e.value.hint, (raw, e.value.hint)


def test_by_family_float_op_types_reach_the_decisions(tiny_exports):
    """A family's ``by_family`` entry applies to builds for that family only, each node with the reason."""
    from edgeq.quantize.policy import decide
    from edgeq.stages.context import for_family

    graph = onnx.load(str(tiny_exports["sd15"] / "unet" / "model.onnx"), load_external_data=False).graph
    base = load_profile("openvino")
    vnni = decide(graph, for_family(base, 8, "x86-vnni").policy("unet"))
    novnni_profile = for_family(base, 7, "x86-novnni")
    novnni = decide(graph, novnni_profile.policy("unet"))
    assert novnni_profile.policy("unet").weight_bits == 7
    linear = [d for d in vnni if d.op_type in ("MatMul", "Gemm") and d.quantized]
    assert linear  # quantized where the int8 FullyConnected is fast
    by_node = {d.node: d for d in novnni}
    for d in linear:
        assert not by_node[d.node].quantized
        assert by_node[d.node].reason.startswith("x86-novnni: OpenVINO's int8 FullyConnected without VNNI")
    convs = [d.quantized for d in vnni if d.op_type == "Conv"]
    assert convs == [d.quantized for d in novnni if d.op_type == "Conv"]  # the convolutions do not change
    # the VNNI entry's activation flavour: symmetric int8, attention MatMuls int8 with the measured reason
    pv, pn = for_family(base, 8, "x86-vnni").policy("unet"), novnni_profile.policy("unet")
    assert (pv.activation_type, pv.activation_symmetric, pv.activation_matmul) == ("int8", True, "int8")
    assert (pn.activation_type, pn.activation_symmetric, pn.activation_matmul) == ("uint8", False, "float")
    attn = [d for d in vnni if d.reason.startswith("MatMul of two activations")]
    assert attn and all(d.quantized and "x86-vnni: symmetric int8 lets OpenVINO" in d.reason for d in attn)
    assert not any(by_node[d.node].quantized for d in attn)


def test_target_options_schemas():
    """Each shipped target's Options, through the same validator (the class the registry gives)."""
    mobile = target_class("ort-mobile").Options
    assert check(mobile, {"execution_providers": ["QNN"]}).execution_providers == ("QNN",)
    for raw, key in [({"optimization_level": "fast"}, "optimization_level"), ({"target_platform": "x86"}, "target")]:
        with pytest.raises(EdgeqError, match=key):
            check(mobile, raw, "onnxruntime")
    ov = target_class("openvino").Options
    assert check(ov, {}) == ov(device="CPU", inference_precision="auto", performance_hint="LATENCY")
    for raw, allowed in [
        ({"inference_precision": "f64"}, "one of auto, f32, bf16, f16"),
        ({"performance_hint": "FAST"}, "one of LATENCY, THROUGHPUT, CUMULATIVE_THROUGHPUT"),
    ]:
        with pytest.raises(EdgeqError) as e:
            check(ov, raw, "openvino")
        assert allowed in e.value.hint
    trt = target_class("tensorrt").Options
    assert check(trt, {"batch": [1, 2, 8], "workspace_gib": 4}).workspace_gib == 4.0
    for raw, message in [
        ({"batch": [4, 1, 1]}, "[tensorrt]: batch must be [min, opt, max]"),
        ({"batch": [1, 2]}, "[tensorrt] batch = [1, 2]: has 2 values, not 3"),
        ({"float_precision": "int4"}, '[tensorrt] float_precision = "int4": is not allowed'),
        ({"keep_fp32": "^/a/"}, "[tensorrt] keep_fp32"),
    ]:
        with pytest.raises(EdgeqError) as e:
            check(trt, raw, "tensorrt")
        assert message in e.value.message


# -- merge and extends ------------------------------------------------------------------------------
def test_merge_tables_key_by_key_and_replaces_the_rest():
    base = {"a": {"x": 1, "y": {"p": 1, "q": 2}, "l": [1, 2]}, "b": 1}
    over = {"a": {"y": {"q": 3}, "l": [9]}, "c": {"z": 1}}
    assert merge(base, over) == {"a": {"x": 1, "y": {"p": 1, "q": 3}, "l": [9]}, "b": 1, "c": {"z": 1}}
    assert base["a"]["y"] == {"p": 1, "q": 2}  # inputs untouched


def test_extends_by_name_and_by_path(tmp_path):
    mine = write(
        tmp_path / "mine.toml",
        """
        extends = "ort-mobile-qnn"
        [unet]
        activation_type = "uint8"
        exclude = [{ pattern = "^/conv_in/", reason = "only this one" }]
        [onnxruntime]
        provider_options = { QNN = { htp_performance_mode = "high" } }
        """,
    )
    p = load_profile(str(mine))
    qnn = load_profile("ort-mobile-qnn")
    assert p.name == "mine" and p.description == "" and p.target == "ort-mobile"  # target inherited, name own
    assert p.policy("unet").activation_type == "uint8"
    assert p.policy("unet").per_channel_op_types == ("Conv",)  # the rest of [unet] from the base
    assert p.policy("unet").exclude == (Exclusion("^/conv_in/", "only this one"),)  # a list is replaced
    assert p.policy("vae_decoder") == qnn.policy("vae_decoder") and p.gates == qnn.gates
    assert p.target_options.provider_options == {
        "QNN": {"backend_path": "libQnnHtp.so", "htp_performance_mode": "high"}
    }
    assert "extends" not in p.raw and p.raw["target"] == "ort-mobile"
    # a path relative to the extending file, a chain of two, and a `_base` named without its underscore
    write(
        tmp_path / "sub" / "base.toml",
        """
        target = "ort-cpu"
        extends = "common"
        [gates]
        e2e_ssim = 0.5
        [unet]
        mode = "int8"
        [vae_decoder]
        mode = "int8"
        """,
    )
    top = write(tmp_path / "top.toml", 'extends = "sub/base.toml"\n[gates]\nvae_psnr_db = 25\n')
    p = load_profile(top)
    assert (p.target, p.gates.e2e_ssim, p.gates.vae_psnr_db, p.gates.unet_sqnr_db) == ("ort-cpu", 0.5, 25.0, 20.0)
    assert p.policy("unet").exclude == load_profile("tensorrt").policy("unet").exclude  # from _common
    # a path with a slash but no .toml suffix
    write(tmp_path / "noext", 'extends = "openvino"\n')
    assert load_profile(f"{tmp_path}/noext").target == "openvino"


def test_extends_errors_and_key_origin(tmp_path):
    write(tmp_path / "a.toml", 'extends = "b.toml"\n')
    write(tmp_path / "b.toml", 'extends = "./a.toml"\n')
    with pytest.raises(EdgeqError, match=r"extends cycle: a.toml -> b.toml -> a.toml"):
        load_profile(tmp_path / "a.toml")
    write(tmp_path / "self.toml", 'extends = "self.toml"\n')
    with pytest.raises(EdgeqError, match="extends cycle"):
        load_profile(tmp_path / "self.toml")
    write(tmp_path / "gone.toml", 'extends = "no-such-profile"\n')
    with pytest.raises(EdgeqError, match=r'gone.toml: extends = "no-such-profile": no such profile') as e:
        load_profile(tmp_path / "gone.toml")
    assert "_common" in e.value.hint and "ort-cpu" in e.value.hint
    write(tmp_path / "num.toml", "extends = 3\n")
    with pytest.raises(EdgeqError, match="extends = 3: is not a string"):
        load_profile(tmp_path / "num.toml")
    # a mistake in a base is reported in the base's file
    write(tmp_path / "badbase.toml", 'target = "ort-cpu"\n[calibration]\ngroups = 0\n')
    write(tmp_path / "child.toml", 'extends = "badbase.toml"\n[calibration]\ngrouping = "uniform"\n')
    with pytest.raises(EdgeqError) as e:
        load_profile(tmp_path / "child.toml")
    assert e.value.message.startswith(f"{tmp_path / 'badbase.toml'}: [calibration] groups = 0")


# -- the shipped profiles ---------------------------------------------------------------------------
def test_shipped_profiles_resolve_exactly_as_before():
    golden = json.loads(GOLDEN.read_text())
    assert sorted(golden) == sorted(SHIPPED) == profile_names()
    for name in SHIPPED:
        p = load_profile(name)
        got = {
            "name": p.name,
            "description": p.description,
            "components": {k: asdict(v) for k, v in p.components.items()},
            "gates": asdict(p.gates),
            "calibration": asdict(p.calibration),
            "export": asdict(p.export),
            "runtime": p.runtime,
            "runtime_options": p.runtime_options,
            "cpu": asdict(p.cpu) if p.cpu else None,
        }
        assert json.loads(json.dumps(got)) == golden[name], name
    targets = {n: (load_profile(n).target, load_profile(n).section) for n in SHIPPED}
    assert targets == {
        "openvino": ("openvino", "openvino"),
        "ort-cpu": ("ort-cpu", None),
        "ort-mobile": ("ort-mobile", "onnxruntime"),
        "ort-mobile-qnn": ("ort-mobile", "onnxruntime"),
        "tensorrt": ("tensorrt", "tensorrt"),
    }
    for path in profiles_dir().glob("*.toml"):
        assert "runtime =" not in path.read_text(), path


def test_shipped_target_options():
    assert load_profile("ort-mobile-qnn").target_options.optimization_level == "basic"
    assert load_profile("tensorrt").target_options.batch == (1, 1, 4)
    assert load_profile("openvino").target_options.inference_precision == "auto"
    assert load_profile("ort-mobile").target_class().name == "ort-mobile"


def test_names_and_paths(tmp_path):
    assert "_common" not in profile_names()
    with pytest.raises(EdgeqError, match="'_common' is a base") as e:
        load_profile("_common")
    assert "ort-cpu" in e.value.hint
    with pytest.raises(EdgeqError, match="no target profile 'nonexistent'") as e:
        load_profile("nonexistent")
    assert e.value.hint.startswith("targets: openvino, ort-cpu, ort-mobile, ort-mobile-qnn, tensorrt")
    with pytest.raises(EdgeqError, match="no target profile file"):
        load_profile(str(tmp_path / "missing.toml"))
    write(tmp_path / "syntax.toml", "[unet\n")
    with pytest.raises(EdgeqError, match="is not valid TOML"):
        load_profile(tmp_path / "syntax.toml")
    write(tmp_path / "x.toml", 'name = "x"\n')
    with pytest.raises(EdgeqError, match="names no target, and its name 'x' is not one") as e:
        load_profile(tmp_path / "x.toml")
    assert "target =" in e.value.hint
    write(tmp_path / "y.toml", 'target = "tensorrtt"\n')
    with pytest.raises(EdgeqError, match='y.toml: target = "tensorrtt": unknown target'):
        load_profile(tmp_path / "y.toml")


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        ('runtime = "openvino"\n', 'runtime = "openvino": profiles no longer name a runtime', "remove it"),
        ("[gate]\nunet_sqnr_db = 1\n", "unknown section [gate] (target ort-cpu)", "did you mean 'gates'?"),
        ("[openvino]\ndevice = 'CPU'\n", "unknown section [openvino] (target ort-cpu)", "sections: unet,"),
        ('nmae = "x"\n', "unknown top-level key nmae", "did you mean 'name'?"),
        ("unet = 1\n", "unet = 1: is not a section", "[unet]"),
    ],
)
def test_unknown_top_level(tmp_path, text, message, hint):
    path = write(tmp_path / "p.toml", 'extends = "ort-cpu"\n' + text)
    with pytest.raises(EdgeqError) as e:
        load_profile(path)
    assert e.value.message == f"{path}: {message}"
    assert hint in e.value.hint


# -- manifests and plugins --------------------------------------------------------------------------
PLUGIN = """
from dataclasses import dataclass, field

from edgeq.targets.base import Target


@dataclass(frozen=True)
class Opts:
    speed: int = field(default=1, metadata={"min": 1, "help": "how fast"})


class Mine(Target):
    name = "edgeq-test-plugin"
    description = "a test target"
    runtime = "json"
    install = "nothing"
    section = "mine"
    Options = Opts


TARGET = Mine
"""


def test_plugin_profile_and_manifest_roundtrip(tmp_path, monkeypatch):
    write(tmp_path / "prof" / "plug" / "__init__.py", PLUGIN)
    path = write(
        tmp_path / "prof" / "mine.toml",
        """
        target = "edgeq-test-plugin"
        plugin = "plug"
        extends = "ort-cpu"
        [mine]
        speed = 3
        """,
    )
    p = load_profile(path)
    assert p.plugin == (tmp_path / "prof" / "plug").resolve() and p.plugin.is_absolute()
    assert p.target_options.speed == 3 and p.runtime == "mine" and p.runtime_options == {"speed": 3}
    assert p.target_class().name == "edgeq-test-plugin"
    manifest = {"quantization": {"profile": json.loads(json.dumps(p.raw))}}
    monkeypatch.chdir(tmp_path)  # the recorded plugin path is absolute
    q = profile_from_manifest(manifest)
    assert (q.name, q.target, q.plugin, q.target_options) == (p.name, p.target, p.plugin, p.target_options)
    assert (q.components, q.gates, q.calibration, q.export) == (p.components, p.gates, p.calibration, p.export)
    write(path, path.read_text().replace("speed = 3", "sped = 3"))
    with pytest.raises(EdgeqError, match=r"\[mine\] sped: unknown key"):
        load_profile(path)


def test_profile_from_manifest(tmp_path):
    for name in SHIPPED:
        p = load_profile(name)
        q = profile_from_manifest({"quantization": {"profile": json.loads(json.dumps(p.raw))}})
        assert (q.name, q.target, q.components, q.gates, q.target_options) == (
            p.name,
            p.target,
            p.components,
            p.gates,
            p.target_options,
        )
    # a build from before profiles named their target: top-level runtime, no target key
    old = json.loads(json.dumps(load_profile("ort-mobile-qnn").raw))
    del old["target"]
    old["runtime"] = "onnxruntime"
    assert profile_from_manifest({"quantization": {"profile": old}}).target == "ort-mobile"
    with pytest.raises(EdgeqError, match="records no target profile"):
        profile_from_manifest({"quantization": {}}, tmp_path / "manifest.json")
    bad = json.loads(json.dumps(load_profile("ort-cpu").raw))
    bad["gates"]["unet_cosine"] = 2
    with pytest.raises(EdgeqError, match=r"manifest.json: \[gates\] unet_cosine = 2: is out of range"):
        profile_from_manifest({"quantization": {"profile": bad}}, tmp_path / "manifest.json")


# -- through the command line -----------------------------------------------------------------------
CLI_CASES = {
    "unknown section": ('extends = "ort-cpu"\n[gate]\nunet_sqnr_db = 20.0\n', "[gate]"),
    "group_mode": ('extends = "ort-cpu"\n[calibration]\ngroup_mode = "bogus"\n', 'group_mode = "bogus"'),
    "groups": ('extends = "ort-cpu"\n[calibration]\ngroups = 0\n', "groups = 0"),
    "openvino key": ('extends = "openvino"\n[openvino]\ndevcie = "GPU"\n', "[openvino] devcie"),
    "onnxruntime value": (
        'extends = "ort-mobile"\n[onnxruntime]\noptimization_level = "fast"\n',
        'optimization_level = "fast"',
    ),
    "tensorrt value": ('extends = "tensorrt"\n[tensorrt]\nfloat_precision = "int4"\n', 'float_precision = "int4"'),
    "tensorrt check": ('extends = "tensorrt"\n[tensorrt]\nbatch = [4, 1, 1]\n', "[tensorrt]: batch must be"),
    "wrong type": ('extends = "ort-cpu"\n[gates]\nunet_sqnr_db = "high"\n', 'unet_sqnr_db = "high"'),
    "unet key": ('extends = "ort-cpu"\n[unet]\nactivation_typ = "int8"\n', "[unet] activation_typ"),
    "extends cycle": ('extends = "BAD.toml"\n', "extends cycle"),
    "cpu family": ('extends = "openvino"\n[cpu]\nfamily = "x86-avx3"\n', 'family = "x86-avx3"'),
    "cpu on tensorrt": ('extends = "tensorrt"\n[cpu]\nfamily = "portable"\n', "unknown section [cpu]"),
    "weight bits": ('extends = "ort-cpu"\n[unet]\nweight_bits = 6\n', "weight_bits = 6"),
    "extends missing": ('extends = "ort-cpuu"\n', 'extends = "ort-cpuu"'),
}


@pytest.fixture(scope="module")
def warm_cli():
    """One start of the CLI first: the time measured is the refusal's, not a cold disk's."""
    subprocess.run([sys.executable, "-m", "edgeq", "--version"], capture_output=True, timeout=60)


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_fails_fast_on_profile_mistakes(tmp_path, case, warm_cli):
    text, named = CLI_CASES[case]
    bad = write(tmp_path / "BAD.toml", text)
    out, cache = tmp_path / "out", tmp_path / "cache"
    cmd = [sys.executable, "-m", "edgeq", "build", "--target", str(bad), "tiny-sd", "--out", str(out)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    r = subprocess.run([*cmd, "--cache-dir", str(cache)], capture_output=True, text=True, env=env, timeout=60)
    elapsed = time.perf_counter() - t0
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert named in r.stderr and str(bad) in r.stderr, r.stderr
    assert not out.exists() and (not cache.exists() or not any(cache.iterdir()))
    assert elapsed < 2.0, f"{case}: the CLI took {elapsed:.2f} s to refuse the profile"


def test_cpu_flag_is_checked_before_any_work(tmp_path, warm_cli):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "edgeq", "build", "tiny-sd", "--target", "tensorrt", "--cpu", "portable"]
    r = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "does not run on CPU int8 kernels" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_cpu_family_resolves_to_weight_bits():
    """host is this machine's family; portable and x86 without VNNI ask for 7-bit weights, the rest 8."""
    from edgeq.build import print_config
    from edgeq.runtime.cpu import detect, family_of, weight_bits_for
    from edgeq.stages.config import BuildOptions

    assert family_of("x86_64", {"avx2", "avx512f", "avx512_vnni"}) == "x86-vnni"
    assert family_of("AMD64", {"avx2", "avx_vnni"}) == "x86-vnni"
    assert family_of("x86_64", {"avx2", "avx512f"}) == "x86-novnni"
    assert family_of("aarch64", {"asimd", "asimddp"}) == "arm-dotprod"
    assert family_of("aarch64", {"asimd"}) == "arm"
    assert [weight_bits_for(f)[0] for f in ("x86-vnni", "x86-novnni", "arm-dotprod", "arm", "portable")] == [
        8,
        7,
        8,
        8,
        7,
    ]
    for cpu, family in ((None, detect().family), ("portable", "portable"), ("x86-novnni", "x86-novnni")):
        plan = print_config(BuildOptions("tiny-sd", target="ort-cpu", cpu=cpu))["plan"]
        assert plan["cpu_family"] == family and plan["weight_bits"] == weight_bits_for(family)[0]
        assert plan["weight_bits_reason"]
    plan = print_config(BuildOptions("tiny-sd", target="tensorrt"))["plan"]
    assert plan["cpu_family"] is None and plan["weight_bits"] == 8


def test_a_flavour_a_base_family_entry_would_replace_is_refused(tmp_path):
    """Setting [unet] activation_type over openvino, whose x86-vnni entry sets it too, would be
    silently undone on VNNI builds: refused with the fix; done the way the fix says, it applies."""
    from edgeq.stages.context import for_family

    prof = tmp_path / "ov-u8.toml"
    prof.write_text('extends = "openvino"\n[unet]\nactivation_type = "uint8"\nactivation_symmetric = false\n')
    with pytest.raises(EdgeqError) as e:
        load_profile(prof)
    assert "[unet] activation_type, activation_symmetric: [unet.by_family.x86-vnni]" in e.value.message
    assert "openvino.toml" in e.value.message and "[unet.by_family.x86-vnni] as well" in e.value.hint
    prof.write_text(
        prof.read_text() + '[unet.by_family.x86-vnni]\nactivation_type = "uint8"\nactivation_symmetric = false\n'
        'activation_matmul = "float"\nflavour_reason = "accuracy first"\n'
    )
    vnni = for_family(load_profile(prof), 8, "x86-vnni").policy("unet")
    assert (vnni.activation_type, vnni.activation_symmetric, vnni.activation_matmul) == ("uint8", False, "float")
    assert vnni.flavour_reason == "x86-vnni: accuracy first"
    # the same value as the family entry's is no conflict
    prof.write_text('extends = "openvino"\n[unet]\nactivation_matmul = "int8"\n')
    assert load_profile(prof).policy("unet").activation_matmul == "int8"
