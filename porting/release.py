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


def tokenizer_class(folder: Path) -> str:
    """The tokenizer class a tokenizer folder declares (T5TokenizerFast when it declares none)."""
    try:
        cls = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, json.JSONDecodeError):
        cls = None
    return cls or "T5TokenizerFast"
