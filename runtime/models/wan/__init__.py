"""Wan2.1 text-to-video: native DiT, config presets, family definition. ``WanDiT`` (torch) is imported on
first use, so the family's data (``runtime.models.wan.family``) loads without torch."""

from vidport.runtime.models.wan.config import PRESETS, WanDiTConfig

__all__ = ["PRESETS", "WanDiT", "WanDiTConfig"]


def __getattr__(name: str):
    if name == "WanDiT":
        from vidport.runtime.models.wan.model import WanDiT

        return WanDiT
    raise AttributeError(f"module 'vidport.runtime.models.wan' has no attribute {name!r}")
