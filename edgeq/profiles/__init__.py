"""Target profiles: the TOML files that say how a target quantizes, checks and packages a model.

A profile is checked in full when it is loaded, before any work: every section and key must be
known and typed (the schema is the dataclasses of :mod:`edgeq.profiles.schema` and the target's own
``Options``), and a mistake names the file, section, key and value. ``extends`` makes a profile
another one plus changes: tables merge key by key, any other value (a list too) is replaced.
Shipped profiles live in :func:`edgeq.data.profiles_dir`; ``_<name>.toml`` files there are bases
to extend, not targets.
"""

from __future__ import annotations

import copy
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeq.errors import EdgeqError
from edgeq.profiles.schema import (
    CalibrationDefaults,
    ComponentPolicy,
    CpuFlavour,
    Exclusion,
    ExportDefaults,
    Gates,
    Where,
    show,
    validate,
)

if TYPE_CHECKING:
    from edgeq.targets.base import Target

__all__ = [
    "COMPONENTS",
    "CalibrationDefaults",
    "ComponentPolicy",
    "CpuFlavour",
    "Exclusion",
    "ExportDefaults",
    "Gates",
    "Profile",
    "load_profile",
    "merge",
    "profile_from_manifest",
    "profile_names",
    "validate",
]

COMPONENTS = ("unet", "vae_decoder", "text_encoder", "text_encoder_2")
SECTIONS: dict[str, type] = {"gates": Gates, "calibration": CalibrationDefaults, "export": ExportDefaults}
TOP_KEYS = ("name", "description", "target", "plugin", "extends")


@dataclass(frozen=True)
class Profile:
    """A resolved, validated profile. ``raw`` is the merged TOML (what a build's manifest records)."""

    name: str
    description: str
    target: str  # the Target implementation's name
    components: dict[str, ComponentPolicy]
    gates: Gates
    calibration: CalibrationDefaults
    export: ExportDefaults = field(default_factory=ExportDefaults)
    cpu: CpuFlavour | None = None  # CPU targets' [cpu] section (None: the target has no CPU int8 kernels)
    target_options: Any = None  # the target's Options, validated from its section
    section: str | None = None  # the target's section name (None: it has no options)
    plugin: Path | None = None  # absolute folder of a plugin target
    path: Path = field(default=Path())
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def runtime(self) -> str:
        """The name of the target's options section (``onnxruntime`` when it has none)."""
        return self.section or "onnxruntime"

    @property
    def runtime_options(self) -> dict[str, Any]:
        """The target's section as written (see :attr:`target_options` for the validated one)."""
        return dict(self.raw.get(self.runtime, {}))

    def target_class(self) -> type[Target]:
        from edgeq.targets import target_class

        return target_class(self.target, plugin=self.plugin)

    def policy(self, component: str) -> ComponentPolicy:
        return self.components.get(component, ComponentPolicy(mode="float", reason="not named in the profile"))


def profile_names() -> list[str]:
    """The shipped targets: profiles in the profiles folder, bases (``_*.toml``) left out."""
    from edgeq.data import profiles_dir

    return sorted(p.stem for p in profiles_dir().glob("*.toml") if not p.stem.startswith("_"))


def load_profile(name_or_path: str | Path) -> Profile:
    """A shipped profile by name, or any profile file by path (a ``.toml`` name or one with a slash)."""
    path = _locate(name_or_path)
    raw, origins = _resolve(path, ())

    def origin(section: str, key: str) -> Path:
        return origins.get((section, key)) or origins.get((section, "")) or path

    return _build(raw, path, origin)


def profile_from_manifest(manifest: dict[str, Any], path: Path | None = None) -> Profile:
    """The profile a build was made with, from its manifest (``quantization.profile``, the resolved
    dict); ``path`` (the manifest file) is what error messages name."""
    where = path or Path("manifest.json")
    raw = manifest.get("quantization", {}).get("profile")
    if not isinstance(raw, dict):
        raise EdgeqError(f"{where} records no target profile (quantization.profile)", "rebuild it with this edgeq")
    raw = copy.deepcopy(raw)
    raw.pop("extends", None)  # recorded resolved
    if isinstance(raw.get("runtime"), str):  # builds from before profiles named their target
        del raw["runtime"]
    raw.setdefault("target", _shipped_target(str(raw.get("name", ""))))
    return _build(raw, where, lambda section, key: where)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: tables merge key by key, every other value is replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# -- finding and reading files ----------------------------------------------------------------------
def _is_path(ref: str) -> bool:
    return ref.endswith(".toml") or "/" in ref or os.sep in ref


def _locate(ref: str | Path) -> Path:
    from edgeq.data import profiles_dir

    text = str(ref)
    if isinstance(ref, Path) or _is_path(text):
        path = Path(text).expanduser()
        if not path.is_file():
            raise EdgeqError(f"no target profile file {path}", "give an existing .toml file or a target name")
        return path
    known = ", ".join(profile_names())
    if text.startswith("_"):
        raise EdgeqError(f"{text!r} is a base for profiles to extend, not a target", f"targets: {known}")
    path = profiles_dir() / f"{text}.toml"
    if not path.is_file():
        raise EdgeqError(f"no target profile {text!r} in {profiles_dir()}", f"targets: {known}; or give a .toml file")
    return path


def _locate_base(ref: Any, child: Path) -> Path:
    from edgeq.data import profiles_dir

    if not isinstance(ref, str) or not ref:
        raise EdgeqError(f"{child}: extends = {show(ref)}: is not a profile name or path", _extends_hint(child))
    if _is_path(ref):
        candidates = [Path(ref).expanduser() if Path(ref).is_absolute() else child.parent / ref]
    else:
        candidates = [profiles_dir() / f"{ref}.toml", profiles_dir() / f"_{ref}.toml"]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise EdgeqError(f"{child}: extends = {show(ref)}: no such profile ({candidates[0]})", _extends_hint(child))
    return found


def _extends_hint(child: Path) -> str:
    from edgeq.data import profiles_dir

    bases = sorted(p.stem for p in profiles_dir().glob("*.toml"))
    return f"a profile name ({', '.join(bases)}) or a .toml path relative to {child.parent}"


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise EdgeqError(f"{path} is not valid TOML: {e}", "fix the syntax at that line") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EdgeqError(f"cannot read target profile {path}: {e}") from None


def _resolve(path: Path, seen: tuple[Path, ...]) -> tuple[dict[str, Any], dict[tuple[str, str], Path]]:
    """The profile at ``path`` with its ``extends`` chain merged in, and which file set each key."""
    real = path.resolve()
    if real in seen:
        chain = " -> ".join(p.name for p in (*seen, real))
        raise EdgeqError(f"{path}: extends cycle: {chain}", "a profile cannot extend itself, directly or not")
    raw = _read(path)
    for key in TOP_KEYS:
        if key in raw and not isinstance(raw[key], str):
            raise EdgeqError(f"{path}: {key} = {show(raw[key])}: is not a string", f"{key}: a string")
    if "plugin" in raw:  # relative to the file that names it; absolute once resolved (manifests)
        raw["plugin"] = str((path.parent / raw["plugin"]).expanduser().resolve())
    origins: dict[tuple[str, str], Path] = {}
    for key, value in raw.items():
        origins[(key, "")] = path
        for sub in value if isinstance(value, dict) else ():
            origins[(key, sub)] = path
    ref = raw.pop("extends", None)
    if ref is None:
        return raw, origins
    base_path = _locate_base(ref, path)
    base, base_origins = _resolve(base_path, (*seen, real))
    if not base_path.stem.startswith("_"):  # a target profile's target defaults to its name
        base.setdefault("target", base.get("name", base_path.stem))
    for own in ("name", "description"):  # each profile's own
        base.pop(own, None)
    _check_family_overrides(raw, base, path, base_origins)
    return merge(base, raw), {**base_origins, **origins}


FLAVOUR_KEYS = ("activation_type", "activation_symmetric", "activation_matmul", "attention_probs")


def _check_family_overrides(raw: dict, base: dict, path: Path, base_origins: dict) -> None:
    """A flavour key a profile sets in a component that a base's ``by_family`` entry sets too would be
    silently replaced on that family's builds: refuse it, naming the entry and the fix."""
    for section, table in raw.items():
        if not isinstance(table, dict) or not isinstance(base.get(section), dict):
            continue
        families = base[section].get("by_family")
        own_families = table.get("by_family") if isinstance(table.get("by_family"), dict) else {}
        for family, entry in (families or {}).items():
            if not isinstance(entry, dict):
                continue
            mine = own_families.get(family) if isinstance(own_families.get(family), dict) else {}
            hidden = [k for k in FLAVOUR_KEYS if k in table and k in entry and k not in mine and table[k] != entry[k]]
            if hidden:
                where = base_origins.get((section, "by_family")) or base_origins.get((section, ""))
                keys = ", ".join(hidden)
                raise EdgeqError(
                    f"{path}: [{section}] {keys}: [{section}.by_family.{family}] in {where} sets "
                    f"{'it' if len(hidden) == 1 else 'them'} too, and would replace yours on {family} builds",
                    f"set {keys} in [{section}.by_family.{family}] as well (with a flavour_reason), "
                    f"so {family} builds use your flavour",
                )


# -- validation -------------------------------------------------------------------------------------
def _build(raw: dict[str, Any], path: Path, origin) -> Profile:
    name = raw.get("name", path.stem)
    target = raw.get("target", name)
    plugin = Path(raw["plugin"]) if raw.get("plugin") else None
    try:
        cls = _target_class(target, plugin)
    except EdgeqError as e:
        if "target" in raw:
            raise EdgeqError(f"{origin('target', '')}: target = {show(target)}: {e.message}", e.hint) from None
        raise EdgeqError(
            f"{path}: names no target, and its name {name!r} is not one ({e.message})",
            f'add target = "<{e.hint or "a target"}>" or extends = "<a shipped profile>"',
        ) from None
    section = getattr(cls, "section", None)
    options_cls = getattr(cls, "Options", None)
    cpu_kernels = bool(getattr(cls, "cpu_kernels", False))
    if not cpu_kernels and "cpu" in raw and origin("cpu", "") != path:
        raw = {k: v for k, v in raw.items() if k != "cpu"}  # a base's [cpu]: not for a target without CPU kernels
    sections = [*COMPONENTS, *SECTIONS, *(["cpu"] if cpu_kernels else []), *([section] if section else [])]
    for key, value in raw.items():
        if key in TOP_KEYS:
            continue
        if key not in sections:
            raise _unknown(key, value, origin(key, ""), target, sections)
        if not isinstance(value, dict):
            raise EdgeqError(
                f"{origin(key, '')}: {key} = {show(value)}: is not a section", f"write [{key}] and its keys"
            )
    components = {k: validate(ComponentPolicy, raw[k], Where(path, k, origin=origin)) for k in COMPONENTS if k in raw}
    parts = {k: validate(cls_, raw.get(k, {}), Where(path, k, origin=origin)) for k, cls_ in SECTIONS.items()}
    cpu = validate(CpuFlavour, raw.get("cpu", {}), Where(path, "cpu", origin=origin)) if cpu_kernels else None
    options = None
    if options_cls is not None:
        options = validate(
            options_cls, raw.get(section, {}) if section else {}, Where(path, section or "", origin=origin)
        )
    resolved = {"name": name, "target": target, **{k: v for k, v in raw.items() if k not in ("name", "target")}}
    return Profile(
        name=name,
        description=raw.get("description", ""),
        target=target,
        components=components,
        gates=parts["gates"],
        calibration=parts["calibration"],
        export=parts["export"],
        cpu=cpu,
        target_options=options,
        section=section,
        plugin=plugin,
        path=path,
        raw=resolved,
    )


def _target_class(name: str, plugin: Path | None) -> type[Target]:
    from edgeq.targets import target_class

    return target_class(name, plugin=plugin)


def _unknown(key: str, value: Any, file: Path, target: str, sections: list[str]) -> EdgeqError:
    import difflib

    allowed = f"sections: {', '.join(sections)}; top-level keys: {', '.join(TOP_KEYS)}"
    if key == "runtime":
        return EdgeqError(
            f"{file}: runtime = {show(value)}: profiles no longer name a runtime",
            f"remove it: the target ({target}) says its runtime; name another implementation with target = ...",
        )
    close = difflib.get_close_matches(key, [*sections, *TOP_KEYS], n=1)
    guess = f"did you mean {close[0]!r}? " if close else ""
    what = f"unknown section [{key}] (target {target})" if isinstance(value, dict) else f"unknown top-level key {key}"
    return EdgeqError(f"{file}: {what}", guess + allowed)


def _shipped_target(name: str) -> str:
    """The target of a shipped profile (for manifests written before profiles named their target)."""
    from edgeq.data import profiles_dir

    path = profiles_dir() / f"{name}.toml"
    if not path.is_file():
        return name
    raw, _ = _resolve(path, ())
    return str(raw.get("target", name))
