"""CPU int8 kernel families: what the running CPU is, and what its int8 kernels do to a Q/DQ graph.

The same W8A8 graph is computed differently from CPU to CPU. ONNX Runtime's MLAS and OpenVINO's
oneDNN multiply uint8 activations by int8 weights with the best instruction the CPU has:

* ``x86-vnni``: VPDPBUSD (AVX-512 VNNI, AVX-VNNI) or AMX: products summed in int32, exact.
* ``x86-novnni``: AVX2 or AVX-512 without VNNI: VPMADDUBSW sums *pairs* of u8 x s8 products in
  int16 and saturates (255 x 127 x 2 = 64770 > 32767), so large activations times large weights
  are clipped. 7-bit weights (|w| <= 64: 255 x 64 x 2 = 32640) cannot saturate.
  (OpenVINO documents it as its "saturation issue", NNCF as ``OverflowFix``, ONNX Runtime as
  ``reduce_range``.)
* ``arm-dotprod``: ARMv8.2 dot products (SDOT/UDOT) accumulate in int32, exact.
* ``arm``: ARMv8.0 without dot products: widening multiplies and pairwise int32 adds, exact.

``portable`` is not a CPU: it names the flavour that is exact on every family (7-bit weights).

Standalone (the deployable runtime uses it to warn when a build meets a CPU it was not made for).
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

FAMILIES: dict[str, str] = {
    "x86-vnni": "x86 with VNNI or AMX: u8 x s8 products summed in int32 (exact)",
    "x86-novnni": "x86 AVX2 / AVX-512 without VNNI: u8 x s8 pairs summed in int16 (VPMADDUBSW), which saturates",
    "arm-dotprod": "ARM with dot-product instructions (SDOT/UDOT): int32 accumulation (exact)",
    "arm": "ARM without dot product: widening multiplies, int32 accumulation (exact)",
}
PORTABLE = "portable"
SATURATING = frozenset({"x86-novnni"})  # families whose u8 x s8 kernels saturate 8-bit weights
_X86_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16")
_ARM_FLAGS = ("asimd", "asimddp", "i8mm", "sve", "bf16")
# OpenVINO (oneDNN) lets a process cap its instruction set: ONEDNN_MAX_CPU_ISA, read at start-up.
ONEDNN_ISA = "ONEDNN_MAX_CPU_ISA"


@dataclass(frozen=True)
class CpuInfo:
    """The running CPU as far as int8 kernels care: its family, model name and relevant flags."""

    family: str
    machine: str
    model: str
    flags: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flags": list(self.flags)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CpuInfo:
        return cls(d["family"], d.get("machine", ""), d.get("model", ""), tuple(d.get("flags", ())))

    def describe(self) -> str:
        return f"{self.family} ({self.model or self.machine}; {' '.join(self.flags) or 'no int8 flags seen'})"


def _cpuinfo_text() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def _sysctl(name: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def family_of(machine: str, flags: set[str]) -> str:
    """The int8 kernel family of a CPU from its architecture and feature flags."""
    m = machine.lower()
    if m in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "x86-vnni" if flags & {"avx512_vnni", "avx_vnni", "amx_int8"} else "x86-novnni"
    if m in ("aarch64", "arm64") or m.startswith("arm"):
        return "arm-dotprod" if "asimddp" in flags else "arm"
    return "unknown"


@lru_cache(maxsize=1)
def detect() -> CpuInfo:
    """This machine's CPU (Linux: /proc/cpuinfo; macOS: sysctl; elsewhere: the architecture only)."""
    machine = platform.machine() or "unknown"
    text = _cpuinfo_text()
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
    if not text and platform.system() == "Darwin":
        model = _sysctl("machdep.cpu.brand_string")
        if machine == "arm64":
            flags = {"asimd"} | ({"asimddp"} if _sysctl("hw.optional.arm.FEAT_DotProd") == "1" else set())
        else:
            flags = {f.lower().replace(".", "_") for f in _sysctl("machdep.cpu.leaf7_features").split()}
            flags |= {"avx512_vnni"} if "avx512vnni" in flags else set()
    wanted = _X86_FLAGS + _ARM_FLAGS
    return CpuInfo(family_of(machine, flags), machine, model, tuple(f for f in wanted if f in flags))


def effective_family(runtime: str | None = None) -> str:
    """The family this process's int8 kernels run as: the CPU's, unless the runtime is capped.

    OpenVINO honours ``ONEDNN_MAX_CPU_ISA``; a cap below VNNI makes a VNNI CPU compute like one
    without (how edgeq checks the other x86 family on one machine)."""
    fam = detect().family
    cap = os.environ.get(ONEDNN_ISA, "").upper()
    if runtime == "openvino" and fam == "x86-vnni" and cap and "VNNI" not in cap and "AMX" not in cap:
        return "x86-novnni"
    return fam


def can_emulate(family: str, runtime: str) -> bool:
    """Whether this machine can run ``runtime``'s int8 kernels as ``family`` computes them.

    Only downwards on x86 with OpenVINO: an AVX-512 VNNI CPU capped at AVX512_CORE (oneDNN) runs
    the VPMADDUBSW kernels of AVX-512 CPUs without VNNI. (Capping at AVX2 crashes OpenVINO 2026.4:
    its own kernels do not follow the cap.) ONNX Runtime's MLAS has no such switch."""
    cpu = detect()
    return runtime == "openvino" and family == "x86-novnni" and cpu.family == "x86-vnni" and "avx512f" in cpu.flags


def emulation_env(family: str) -> dict[str, str]:
    """Environment variables that make a fresh process compute as ``family`` (see :func:`can_emulate`)."""
    if family == "x86-novnni":
        return {ONEDNN_ISA: "AVX512_CORE"}
    return {}


def weight_bits_for(family: str) -> tuple[int, str]:
    """Weight bits for a family's u8 x s8 kernels, and why."""
    if family in SATURATING:
        return 7, (
            "u8 x s8 pairs are summed in int16 (VPMADDUBSW) and saturate with 8-bit weights; "
            "7-bit weights (|q| <= 64) cannot (255 x 64 x 2 = 32640)"
        )
    if family == PORTABLE:
        return 7, "portable: 7-bit weights are exact on every family, including x86 without VNNI"
    if family == "unknown":
        return 7, "unknown CPU family: 7-bit weights, exact on every known family"
    return 8, f"{family}: int32 accumulation, 8-bit weights are exact"


def family_warning(manifest: dict[str, Any]) -> str | None:
    """A warning when the running CPU's int8 family is not the one a (non-portable) build was made for."""
    cpu = manifest.get("cpu") or {}
    built = cpu.get("family")
    if not built or built == PORTABLE:
        return None
    runtime = manifest.get("components", {}).get("unet", {}).get("runtime", "onnxruntime")
    here = effective_family(runtime)
    if here == built:
        return None
    on = CpuInfo.from_dict(cpu["built_on"]) if cpu.get("built_on") else None
    made = f" (checked on {on.model or on.machine}: {' '.join(on.flags)})" if on else ""
    info = detect()
    cap = os.environ.get(ONEDNN_ISA)
    capped = f"; {ONEDNN_ISA}={cap}" if cap and runtime == "openvino" else ""
    risk = (
        "its u8 x s8 kernels saturate 8-bit weights (VPMADDUBSW): expect several dB less accuracy"
        if here in SATURATING and cpu.get("weight_bits", 8) == 8
        else "accuracy was not measured on this family"
    )
    return (
        f"this build was made for the {built} int8 kernel family{made}; this CPU is {here} "
        f"({info.model or info.machine}: {' '.join(info.flags)}{capped}), and {risk}. Run `edgeq check BUILD` here to "
        "measure it, or rebuild with `--cpu portable` (exact on every family) or `--cpu " + here + "`"
    )
