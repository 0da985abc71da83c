"""Wan2.1 text-to-video: native DiT, config presets, family definition."""

from runtime.models.wan.config import PRESETS, WanDiTConfig
from runtime.models.wan.model import WanDiT

__all__ = ["PRESETS", "WanDiT", "WanDiTConfig"]
