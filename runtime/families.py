"""Registry of model families. Adding a family = one folder under runtime/models plus one line here."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from vidport.porting.errors import UserError

# family name -> module that defines it (see runtime/models/wan/family.py for the contract)
FAMILIES: dict[str, str] = {
    "wan2.1-t2v": "vidport.runtime.models.wan.family",
}


def get_family(name: str) -> ModuleType:
    try:
        return importlib.import_module(FAMILIES[name])
    except KeyError:
        raise UserError(f"unknown model family {name!r}; known families: {', '.join(FAMILIES)}") from None


def split_family_preset(spec: str) -> tuple[ModuleType, str]:
    """'wan2.1-t2v-1.3b' -> (family module, '1.3b')."""
    for name in sorted(FAMILIES, key=len, reverse=True):
        if spec.startswith(name + "-"):
            fam = get_family(name)
            preset = spec[len(name) + 1:]
            if preset not in fam.PRESETS:
                raise UserError(f"unknown preset {preset!r} for {name}; choose one of "
                                f"{', '.join(name + '-' + p for p in fam.PRESETS)}")
            return fam, preset
    known = ", ".join(f"{n}-{p}" for n in FAMILIES for p in get_family(n).PRESETS)
    raise UserError(f"unknown native model {spec!r}; known: {known}")


def native_meta_module(spec: str, component: str = "transformer"):
    """The native module of a family preset's component, on the meta device (no memory)."""
    fam, preset = split_family_preset(spec)
    if component not in fam.COMPONENTS:
        raise UserError(f"{spec} has no component {component!r}; components: {', '.join(fam.COMPONENTS)}")
    return fam.build_component(component, preset, device="meta")


def find_official_component(path: Path, component: str | None) -> Path | None:
    """If ``path`` is an official release folder of a known family, the file of ``component``."""
    for name in FAMILIES:
        fam = get_family(name)
        if fam.is_official_release(path):
            return fam.official_component_file(path, component or "transformer")
    return None
