"""The model-family contract and its one registry.

A family is one folder (``runtime/models/<family>/``) whose ``family.py`` defines ``SPEC``, a
``FamilySpec``: everything generic code (``porting``, ``parity``, ``runtime``) may ask of a family, and
nothing else. Generic code reaches a family only through this registry: by name (``get_family``), by
the Diffusers pipeline class a repo's ``model_index.json`` names (``family_for_pipeline``) or by the look
of an official release folder (``family_for_release``). It never imports a family's modules itself
(``tests/test_family_contract.py`` walks the imports to keep that true).

Heavy parts (the native model, the pipeline stages, parity setups, the parallel plan) are named as
``"module:attribute"`` and imported on first use through ``FamilySpec.load``, so reading the registry
imports no torch. Adding a family is a new folder plus one line in ``FAMILIES``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidport.errors import UserError

# family name -> "module:attribute" of its FamilySpec. Add a line to add a family.
FAMILIES: dict[str, str] = {
    "wan2.1-t2v": "vidport.runtime.models.wan.family:SPEC",
    "ltx-video": "vidport.runtime.models.ltx_video.family:SPEC",
}


@dataclass(frozen=True)
class Geometry:
    """What a request's video must look like for the family's VAE and patchifier."""

    frame_stride: int  # frames = stride * k + 1 (the VAE's temporal compression)
    spatial_multiple: int  # height and width are multiples of this (VAE compression x patch size)
    text_len: int  # text tokens the DiT sees (padded / truncated)

    def check(self, num_frames: int, height: int, width: int) -> list[str]:
        """What is wrong with this geometry, one message per problem with the nearest valid values
        (empty when it fits)."""
        problems = []
        stride, multiple = self.frame_stride, self.spatial_multiple
        if num_frames < 1 or (num_frames - 1) % stride:
            k = max(0, round((num_frames - 1) / stride))
            problems.append(f"num_frames={num_frames} is not of the form {stride}k+1 "
                            f"(e.g. {stride * k + 1} or {stride * (k + 1) + 1})")
        for name, value in (("height", height), ("width", width)):
            if value < multiple or value % multiple:
                problems.append(f"{name}={value} is not a positive multiple of {multiple} "
                                f"(e.g. {max(multiple, value // multiple * multiple)})")
        return problems


@dataclass(frozen=True)
class SSIMSpec:
    """The family's SSIM reference renders and the bars they must clear, per device class."""

    prompts: tuple[tuple[str, int], ...]  # (prompt, seed)
    thresholds: Mapping[str, tuple[float, float]]  # device class ("cpu", "cuda") -> (mean >=, every frame >=)


@dataclass(frozen=True)
class FamilySpec:
    """Everything generic code may ask of a model family (see the module docstring)."""

    name: str
    presets: tuple[str, ...]
    components: tuple[str, ...]  # weights components, Diffusers folder names
    folder: Path  # the family's folder (maps, layouts.json, reference listings live here)
    # --- porting -----------------------------------------------------------------------------
    release: str  # module of the official release format (``vidport.porting.release``)
    is_official_release: Callable[[Path], bool]
    official_component_file: Callable[[Path, str], Path]
    official_to_diffusers: Mapping[str, Path]  # committed name maps, per component
    diffusers_to_native: Path  # committed Diffusers -> native map of the transformer
    build_component: str  # "module:function" (component, preset, device) -> native nn.Module
    native_transformer: str  # "module:function" (Diffusers transformer config dict) -> native DiT
    tiny_release: str  # folder name of the embedded tiny official release under official_weights/
    # --- runtime ------------------------------------------------------------------------------
    pipeline_class: str  # the Diffusers pipeline class (model_index.json "_class_name") the family serves
    pipeline: str  # module of the family's pipeline (load_components, build_stages, sampling_defaults)
    geometry: Geometry
    parallel_plan: str  # "module:function" (model, group) -> the sequence-parallel model
    # --- parity -------------------------------------------------------------------------------
    parity_setups: str  # "module:attribute": {component: setup function}
    ssim: SSIMSpec
    # optional: "module:function" (repo, RenderSettings, official_root=, device=, dtype=, backend=) -> (uint8
    # frames, reference description): an SSIM reference rendered by the family's official code (a checkout)
    official_render: str = ""
    facts: Mapping[str, Any] = field(default_factory=dict)  # anything else, for the family's own modules

    def __post_init__(self) -> None:
        optional = ("official_render", "facts")
        missing = [f.name for f in dataclasses.fields(self) if f.name not in optional and not getattr(self, f.name)]
        if missing:
            raise UserError(f"model family {self.name or '?'} is incomplete: no {', '.join(missing)} "
                            "(see vidport/families.py FamilySpec)")
        for comp in self.components:
            if comp not in self.official_to_diffusers:
                raise UserError(f"model family {self.name}: no official->Diffusers map for component {comp!r}")

    def load(self, ref: str) -> Any:
        """Import a ``"module:attribute"`` (or ``"module"``) the spec names."""
        module, _, attr = ref.partition(":")
        obj = importlib.import_module(module)
        return getattr(obj, attr) if attr else obj

    @property
    def layouts(self) -> Path:
        return self.folder / "layouts.json"


def get_family(name: str) -> FamilySpec:
    """The family registered under ``name``, or a one-line error listing the known ones."""
    if name not in FAMILIES:
        raise UserError(f"unknown model family {name!r}; known families: {', '.join(FAMILIES)}")
    module, _, attr = FAMILIES[name].partition(":")
    spec = getattr(importlib.import_module(module), attr)
    if not isinstance(spec, FamilySpec) or spec.name != name:
        raise UserError(f"{FAMILIES[name]} is not the FamilySpec of {name!r}")
    return spec


def families() -> list[FamilySpec]:
    return [get_family(name) for name in FAMILIES]


def family_for_pipeline(class_name: str | None, where: str = "model_index.json") -> FamilySpec:
    """The family serving a Diffusers pipeline class (``model_index.json`` ``_class_name``)."""
    for spec in families():
        if spec.pipeline_class == class_name:
            return spec
    served = ", ".join(f"{s.pipeline_class} ({s.name})" for s in families())
    raise UserError(f"{where}: pipeline {class_name!r} is not supported; supported: {served}")


def family_for_release(path: Path) -> FamilySpec | None:
    """The family whose official release layout this folder has, if any."""
    return next((spec for spec in families() if spec.is_official_release(Path(path))), None)


def split_family_preset(spec: str) -> tuple[FamilySpec, str]:
    """'wan2.1-t2v-1.3b' -> (the family, '1.3b')."""
    for name in sorted(FAMILIES, key=len, reverse=True):
        if spec.startswith(name + "-"):
            fam = get_family(name)
            preset = spec[len(name) + 1:]
            if preset not in fam.presets:
                raise UserError(f"unknown preset {preset!r} for {name}; choose one of "
                                f"{', '.join(name + '-' + p for p in fam.presets)}")
            return fam, preset
    known = ", ".join(f"{s.name}-{p}" for s in families() for p in s.presets)
    raise UserError(f"unknown native model {spec!r}; known: {known}")


def native_meta_module(spec: str, component: str = "transformer"):
    """The native module of a family preset's component, on the meta device (no memory)."""
    fam, preset = split_family_preset(spec)
    if component not in fam.components:
        raise UserError(f"{spec} has no component {component!r}; components: {', '.join(fam.components)}")
    return fam.load(fam.build_component)(component, preset, device="meta")


def find_official_component(path: Path, component: str | None) -> Path | None:
    """If ``path`` is an official release folder of a known family, the file of ``component``."""
    fam = family_for_release(path)
    return fam.official_component_file(Path(path), component or "transformer") if fam else None
