"""The target contract: what a backend gives edgeq, and nothing more.

A target is a subclass of :class:`Target` in one module or folder, plus one profile (TOML) that
names it with ``target = "<name>"`` (default: the profile's own name). Generic code never asks a
target's name: it reads the class attributes and calls the methods below. Targets that compile
on the deployment device (TensorRT engines) also implement the engine stage (``engines_*``).

Register a target with :func:`edgeq.targets.register`, by listing it in ``edgeq.targets.BUILTIN``,
by the ``edgeq.targets`` entry-point group of an installed package, or from a folder that a
profile names with ``plugin = "<folder>"`` (relative to the profile file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

ENGINES_NOT_BUILT = 4  # exit code of a build whose device engines could not be compiled here


@dataclass(frozen=True)
class NoOptions:
    """A target without options of its own: its profile has no runtime section."""


class Target:
    """One backend. Class attributes describe it; an instance is bound to one profile."""

    name: ClassVar[str]  # what profiles name with ``target = ...``
    description: ClassVar[str]
    runtime: ClassVar[str]  # import name of the Python package that runs its deployables
    install: ClassVar[str]  # how a user gets that package
    section: ClassVar[str | None] = None  # the profile section holding this target's options
    Options: ClassVar[type] = NoOptions  # frozen dataclass; the profile loader validates the section with it
    needs_runtime_to_build: ClassVar[bool] = True  # False: builds (and simulates) without its runtime
    compiles_on_device: ClassVar[bool] = False  # True: implements the engine stage below
    # True: its int8 kernels are the CPU's and differ by CPU family (a [cpu] section, 7/8-bit weights
    # by family, and a kernel-fidelity gate comparing them with the exact Q/DQ arithmetic)
    cpu_kernels: ClassVar[bool] = False
    # True: the UNet checks run the very graphs the package ships with the runner the deployable uses,
    # so their outputs of the verification bundle's calls are the host's device-check outputs too
    checks_run_as_deployed: ClassVar[bool] = False

    def __init__(self, profile: Any = None):
        self.profile = profile

    @property
    def options(self) -> Any:
        """This target's validated options (the profile's runtime section)."""
        return self.profile.target_options if self.profile is not None else self.Options()

    @classmethod
    def runtime_installed(cls) -> bool:
        import importlib.util

        return importlib.util.find_spec(cls.runtime) is not None

    # -- the build ------------------------------------------------------------------------------------
    def package(self, ctx, stage: Path, unet, mode: str, vae_dir: Path | None) -> tuple[list[Path], dict[str, Any]]:
        """Write the deployable into ``stage``; return its files and the manifest's component entries."""
        raise NotImplementedError

    def manifest_entries(self) -> dict[str, Any]:
        """Top-level manifest entries of the folder :meth:`package` wrote (for example what else runs it)."""
        return {}

    def unet_runner(self, ctx, graphs: list[tuple[Path, dict]]):
        """How the checks run a UNet variant (its Q/DQ ONNX graphs, one per group) on this target."""
        raise NotImplementedError

    def runners(self) -> dict[str, Any]:
        """Runner factories ``(build folder, manifest component) -> runner`` by manifest runtime name;
        ONNX Runtime's are the pipeline's defaults."""
        return {}

    def float_runner(self, path: Path, manifest: dict[str, Any], precision: str | None = None):
        """The FP32 baseline benchmarks compare against on this runtime (None: ONNX Runtime's);
        ``precision``: the runtime's precision hint for it, where it has one."""
        return None

    # -- the engine stage (targets that compile on the device) ----------------------------------------
    def engines_status(self, ctx, folder: Path) -> dict[str, Any] | None:
        """What the manifest says about device engines before they are built (None: no engines)."""
        return None

    def deployed_unet_runner(self, folder: Path, manifest: dict[str, Any]):
        """The UNet as it will run once compiled (None: the packaged graphs are what runs)."""
        return None

    def finish(self, folder: Path, ctx, held_cap, report, log=print):
        """After the portable checks: compile engines where possible and check them."""
        return report

    def build_engines(self, folder: Path, log=print) -> dict[str, Any]:
        """``edgeq engines``: compile a build folder's engines on this machine."""
        from edgeq.errors import EdgeqError

        raise EdgeqError(f"the {self.name} target compiles nothing on the device", "nothing to do")
