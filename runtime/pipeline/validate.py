"""Input validation for video generation: one clear line per problem (UserError)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from vidport.runtime.pipeline.state import GenerationRequest

from vidport.errors import UserError
from vidport.families import Geometry


def validate_request(prompt, negative_prompt, *, num_frames, height, width, num_inference_steps,
                     guidance_scale, seed, geometry: Geometry | None = None) -> GenerationRequest:
    """Check every argument; return the typed request. Messages name the value and what is allowed.
    ``geometry``: the family's frame stride and spatial multiple (``FamilySpec.geometry``); None checks
    only what every family needs (positive integers)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError("the prompt is empty; pass a text describing the video (--prompt)")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise UserError(f"negative prompt must be text, got {type(negative_prompt).__name__}")
    sizes = (("num_frames", num_frames), ("height", height), ("width", width))
    for name, value in sizes:
        _int(value, name)
    problems = geometry.check(num_frames, height, width) if geometry is not None else \
        [f"{name}={value} must be >= 1" for name, value in sizes if value < 1]
    if problems:
        raise UserError(problems[0])
    _int(num_inference_steps, "num_inference_steps")
    if num_inference_steps < 1:
        raise UserError(f"num_inference_steps={num_inference_steps} must be >= 1")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not guidance_scale >= 0:
        raise UserError(f"guidance_scale={guidance_scale!r} must be a number >= 0 (1 disables guidance)")
    _int(seed, "seed")
    if not 0 <= seed < 2**63:
        raise UserError(f"seed={seed} must be in [0, 2**63)")
    return GenerationRequest(prompt=prompt, negative_prompt=negative_prompt or "", num_frames=num_frames,
                             height=height, width=width, num_inference_steps=num_inference_steps,
                             guidance_scale=float(guidance_scale), seed=seed)


def validate_output_path(path: str | os.PathLike) -> Path:
    """The mp4 must go to an existing, writable folder (a file is made and removed there); checked before
    any work is done."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.suffix.lower() != ".mp4":
        raise UserError(f"output {path}: the file name must end in .mp4")
    if path.is_dir():
        raise UserError(f"output {path} is a folder; pass a file path such as {path / 'video.mp4'}")
    if not folder.is_dir():
        raise UserError(f"output folder {folder} does not exist; create it or choose another --output")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"output folder {folder} is not writable; choose another --output")
    # os.access trusts permission bits (root passes everywhere, /proc too): only making a file proves it
    try:
        fd, probe = tempfile.mkstemp(prefix=".vidport-probe", dir=folder)
    except OSError as e:
        reason = e.strerror[0].lower() + e.strerror[1:] if e.strerror else type(e).__name__
        raise UserError(f"output folder {folder} is not writable ({reason}); choose another --output") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return path


def _int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name}={value!r} must be an integer")
