"""vidport runtime: runs validated models. ``import vidport.runtime`` stays light (no torch/diffusers import);
``runtime.VideoGenerator`` is imported on first use."""

from __future__ import annotations

__all__ = ["VideoGenerator"]


def __getattr__(name: str):
    if name == "VideoGenerator":
        from vidport.runtime.generator import VideoGenerator

        return VideoGenerator
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
