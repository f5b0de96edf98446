"""The target registry: one place that maps target names to their implementation.

Built-in targets are modules of this package, imported only when used (``import openvino`` or
``import tensorrt`` never happens at CLI start-up). Others come from :func:`register`, from the
``edgeq.targets`` entry-point group of an installed package, or from a folder a profile names
(``plugin = "<folder>"``): a new target is one folder plus one profile.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edgeq.errors import EdgeqError

if TYPE_CHECKING:
    from edgeq.targets.base import Target

# target name -> module defining it (its ``TARGET`` attribute is the class)
BUILTIN = {
    "ort-cpu": "edgeq.targets.ort_cpu",
    "ort-mobile": "edgeq.targets.ort_mobile",
    "openvino": "edgeq.targets.openvino",
    "tensorrt": "edgeq.targets.tensorrt",
}
_REGISTERED: dict[str, type[Target]] = {}


def register(cls: type[Target]) -> type[Target]:
    """Make ``cls`` available under ``cls.name`` (usable as a class decorator)."""
    _REGISTERED[cls.name] = cls
    return cls


def load_plugin(folder: Path) -> type[Target]:
    """Import a target from a folder (its ``__init__.py`` defines ``TARGET``) and register it."""
    init = folder / "__init__.py"
    if not init.is_file():
        raise EdgeqError(f"target plugin folder {folder} has no __init__.py", "put the Target subclass there")
    mod_name = "edgeq_plugin_" + "".join(c if c.isalnum() else "_" for c in str(folder.resolve()))
    if mod_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(mod_name, init, submodule_search_locations=[str(folder)])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception:
            del sys.modules[mod_name]
            raise
    cls = getattr(sys.modules[mod_name], "TARGET", None)
    if cls is None:
        raise EdgeqError(f"target plugin {init} defines no TARGET", "set TARGET = <your Target subclass>")
    return register(cls)


def _entry_points() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group="edgeq.targets")}


def names() -> list[str]:
    """Every known target name (built-in, registered, installed plugins)."""
    return sorted(set(BUILTIN) | set(_REGISTERED) | set(_entry_points()))


def target_class(name: str, plugin: Path | None = None) -> type[Target]:
    """The class of target ``name`` (importing its module now)."""
    if plugin is not None:
        cls = load_plugin(plugin)
        if cls.name != name:
            raise EdgeqError(f"plugin {plugin} defines target {cls.name!r}, the profile names {name!r}")
        return cls
    if name in _REGISTERED:
        return _REGISTERED[name]
    module = BUILTIN.get(name) or _entry_points().get(name)
    if module is None:
        raise EdgeqError(f"unknown target '{name}'", f"targets: {', '.join(names())}")
    cls = importlib.import_module(module.split(":")[0]).TARGET
    return register(cls)


def get_target(profile_or_name) -> Target:
    """The target of a profile (or a profile name), ready to use: a clear error when its runtime is missing."""
    from edgeq.profiles import load_profile

    profile = load_profile(profile_or_name) if isinstance(profile_or_name, str) else profile_or_name
    cls = profile.target_class()
    if cls.needs_runtime_to_build and not cls.runtime_installed():
        raise EdgeqError(f"the '{profile.name}' target needs {cls.runtime}, which is not installed", cls.install)
    return cls(profile)


def for_manifest(manifest: dict) -> Target:
    """The target a build folder was made for (from its manifest), to run or check it."""
    from edgeq.profiles import profile_from_manifest

    return get_target(profile_from_manifest(manifest))
