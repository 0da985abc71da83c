"""What a family's release format gives the generic conversion planner (``porting.convert``).

A family's release module (e.g. ``runtime/models/wan/release.py``) provides ``COMPONENTS``,
``WEIGHT_STEMS``, ``CONFIG_DTYPE_COMPONENT``, ``read(release) -> ReleaseContents``,
``target_configs(contents)``, ``known_configs()``, ``build_targets(cfgs)`` and
``model_index(tokenizer_class, diffusers_version)``. This module holds the shared pieces."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vidport.porting.sources import StateDictSource

if TYPE_CHECKING:
    import torch


@dataclass
class ReleaseContents:
    """An official release as read: its preset, a streaming source per weights component, every source
    file (hashed into conversion.json), files copied unchanged into the repo (tokenizer), the tokenizer
    class, and whatever else the family needs for its target configs."""

    preset: str
    sources: dict[str, StateDictSource]
    files: list[Path]
    copies: dict[str, Path]
    tokenizer_class: str
    extra: dict = field(default_factory=dict)


def meta_state_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """A model's state-dict shapes (built on the meta device: no memory)."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def library_targets(cfgs: dict[str, dict], stems: dict[str, str], *, transformer, vae, text_config, text_encoder,
                    scheduler, vae_keep_fp32: tuple[str, ...] | None = None):
    """A family's ``build_targets`` for a pipeline of a Diffusers transformer and VAE, a transformers text encoder
    and a scheduler (the classes given): the models on the meta device from ``cfgs`` ->
    ({component: (shapes, weights stem, keep-in-fp32 module names as the libraries declare them)},
    component_files(config_dtype) -> {relative path: config text}, every config file but ``model_index.json``).
    ``vae_keep_fp32`` overrides the VAE class's declaration (``("*",)``: all of it)."""
    import torch

    from vidport.dtypes import torch_dtypes

    with torch.device("meta"):
        models = {"transformer": transformer.from_config(cfgs["transformer"]), "vae": vae.from_config(cfgs["vae"])}
        encoder_config = text_config(**cfgs["text_encoder"])
        models["text_encoder"] = text_encoder(encoder_config)
    keep = {"transformer": tuple(transformer._keep_in_fp32_modules or ()),
            "vae": vae_keep_fp32 if vae_keep_fp32 is not None else tuple(vae._keep_in_fp32_modules or ()),
            "text_encoder": tuple(text_encoder._keep_in_fp32_modules or ())}
    targets = {c: (meta_state_shapes(m), stems[c], keep[c]) for c, m in models.items()}

    def component_files(config_dtype: str) -> dict[str, str]:
        encoder_config.architectures = [text_encoder.__name__]
        encoder_config.dtype = torch_dtypes()[config_dtype]
        return {
            "scheduler/scheduler_config.json": scheduler(**cfgs["scheduler"]).to_json_string(),
            "transformer/config.json": models["transformer"].to_json_string(),
            "vae/config.json": models["vae"].to_json_string(),
            "text_encoder/config.json": encoder_config.to_json_string(),
        }

    return targets, component_files


def tokenizer_class(folder: Path) -> str:
    """The tokenizer class a tokenizer folder declares (T5TokenizerFast when it declares none)."""
    try:
        cls = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, json.JSONDecodeError):
        cls = None
    return cls or "T5TokenizerFast"
