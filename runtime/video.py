"""Frames -> mp4, atomically: written to a temporary file in the target folder, then renamed, so a
failure never leaves a half-written video under the requested name."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from vidport.porting.errors import UserError


def write_mp4(frames: np.ndarray, path: str | os.PathLike, *, fps: int = 16, quality: float = 8.0) -> Path:
    """uint8 frames [F, H, W, 3] -> H.264 mp4 at ``path`` (imageio + imageio-ffmpeg's ffmpeg)."""
    import imageio.v2 as imageio

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    path = Path(path)
    # the temporary name ends in .mp4 so ffmpeg picks the container; it matches .gitignore's *.mp4.tmp*
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp", suffix=".mp4", dir=path.parent or ".")
    os.close(fd)
    try:
        # macro_block_size=1: keep the exact size (heights/widths are multiples of 16 anyway)
        with imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=quality,
                                pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error") as writer:
            for frame in frames:
                writer.append_data(frame)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the video the usual permissions
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
