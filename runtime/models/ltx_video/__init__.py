"""LTX-Video (Lightricks): the native DiT and its config presets (issue 20; not a registered family yet).
``LTXDiT`` (torch) is imported on first use, so the config loads without torch."""

from vidport.runtime.models.ltx_video.config import PRESETS, LTXDiTConfig

__all__ = ["PRESETS", "LTXDiT", "LTXDiTConfig"]


def __getattr__(name: str):
    if name == "LTXDiT":
        from vidport.runtime.models.ltx_video.model import LTXDiT

        return LTXDiT
    raise AttributeError(f"module 'vidport.runtime.models.ltx_video' has no attribute {name!r}")
