"""The one default-device rule (shared base): ``None`` or ``"auto"`` is CUDA when available, else the CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch device; ``None``/``"auto"`` -> ``cuda`` when available, else ``cpu``."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
