"""vidport: port video diffusion models from their official releases into a fast native runtime, and
prove the port is right.

The Python API (each imported on first use, so ``import vidport`` stays light)::

    from vidport import VideoGenerator, convert, diff_keys, parity

    d = diff_keys("official_weights/wan2.1-t2v-tiny", "native:wan2.1-t2v-tiny")     # KeyDiff
    convert("official_weights/wan2.1-t2v-tiny", "converted_weights/wan2.1-t2v-tiny", family="wan2.1-t2v")
    report = parity("wan2.1-t2v", weights="converted_weights/wan2.1-t2v-tiny")     # ParityReport
    with VideoGenerator.from_pretrained("converted_weights/wan2.1-t2v-tiny") as gen:
        frames = gen.generate_video("a cat walks on the grass", seed=0)

The packages: ``vidport.runtime`` (runs validated models), ``vidport.porting`` (checkpoints, name
maps, conversion, the ``port`` command), ``vidport.parity`` (layer-by-layer parity, SSIM).
"""

from __future__ import annotations

__all__ = ["VideoGenerator", "convert", "diff_keys", "parity"]

_API = {
    "VideoGenerator": "vidport.runtime.generator",
    "diff_keys": "vidport.porting.api",
    "convert": "vidport.porting.api",
    "parity": "vidport.parity.api",
}


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'vidport' has no attribute {name!r}")
