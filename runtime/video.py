"""Frames -> mp4, atomically: written to a temporary file in the target folder, then renamed, so a
failure never leaves a half-written video under the requested name.

A write counts only when the file reads back with every frame: ffmpeg can fail without imageio noticing
(a full disk while it writes the trailer leaves an unreadable file, and imageio ignores ffmpeg's exit
code), so a writer exception, an empty or unreadable file and a missing frame are all one ``UserError``
naming the file and the cause; the temporary file is removed on every failure."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

import numpy as np

from vidport.errors import UserError

# less free space than this after a failed write means the disk filled up: ffmpeg says so only on its
# own stderr, and what reaches us is a broken pipe or an unreadable file
LOW_SPACE_BYTES = 1 << 20


def write_mp4(frames: np.ndarray, path: str | os.PathLike, *, fps: int = 16, quality: float = 8.0) -> Path:
    """uint8 frames [F, H, W, 3] -> H.264 mp4 at ``path`` (imageio + imageio-ffmpeg's ffmpeg)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    path = Path(path)
    folder = path.parent  # Path("x.mp4").parent is Path(".")
    try:
        # the temporary name ends in .mp4 so ffmpeg picks the container; it matches .gitignore's *.mp4.tmp*
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp", suffix=".mp4", dir=folder)
    except OSError as e:
        raise UserError(f"cannot write {path}: cannot create a file in {folder} ({_strerror(e)})") from None
    os.close(fd)
    try:
        try:
            _encode(frames, tmp, fps=fps, quality=quality)
        except Exception as e:  # noqa: BLE001 - imageio and ffmpeg fail in many types; each is this write failing
            raise UserError(f"cannot write {path}: {_cause(e, folder)}") from None
        problem = _read_back_problem(tmp, len(frames))
        if problem:
            raise UserError(f"cannot write {path}: {_with_space_cause(problem, folder)}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the video the usual permissions
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {_strerror(e)}") from None
    finally:
        with contextlib.suppress(OSError):  # gone already after the rename
            os.unlink(tmp)
    return path


def _encode(frames: np.ndarray, tmp: str, *, fps: int, quality: float) -> None:
    import imageio.v2 as imageio

    # macro_block_size=1: keep the exact size (heights/widths are multiples of 16 anyway)
    with imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=quality,
                            pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error") as writer:
        for frame in frames:
            writer.append_data(frame)


def _count_frames(file: str) -> int:
    """Frames in an mp4, by decoding it with ffmpeg; raises if ffmpeg cannot read it."""
    import imageio_ffmpeg

    return imageio_ffmpeg.count_frames_and_secs(file)[0]


def _read_back_problem(file: str, expected: int) -> str | None:
    """What is wrong with the encoded file, or None when it reads back with ``expected`` frames."""
    if os.path.getsize(file) == 0:
        return "ffmpeg wrote an empty file"
    try:
        count = _count_frames(file)
    except Exception as e:  # noqa: BLE001 - ffmpeg's reason is in the message, whatever the type
        return f"the encoded video is unreadable ({_last_line(e)})"
    if count != expected:
        return f"the encoded video has {count} of {expected} frames"
    return None


def _free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs on Windows
        return None
    return st.f_bavail * st.f_frsize


def _with_space_cause(problem: str, folder: Path) -> str:
    free = _free_bytes(folder)
    if free is not None and free < LOW_SPACE_BYTES:
        return f"no space left on device ({problem})"
    return problem


def _cause(error: Exception, folder: Path) -> str:
    """One line for a writer failure: the OS's reason when it has one; when ffmpeg died (a broken pipe,
    or a message without an errno) a full disk is the likely reason, so free space decides."""
    if isinstance(error, OSError) and error.errno not in (None, errno.EPIPE):
        return _strerror(error)
    return _with_space_cause(_first_line(error), folder)


def _strerror(error: OSError) -> str:
    if error.errno is not None and error.strerror:
        return error.strerror[0].lower() + error.strerror[1:]  # "no space left on device"
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
