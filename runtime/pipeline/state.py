"""The typed state that flows through a pipeline's stages, and the request that starts it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: validating a request must not import torch (seconds of start-up)
    import numpy as np
    import torch


@dataclass(frozen=True)
class GenerationRequest:
    """What the user asked for, validated (see ``runtime.pipeline.validate``)."""

    prompt: str
    negative_prompt: str
    num_frames: int
    height: int
    width: int
    num_inference_steps: int
    guidance_scale: float
    seed: int

    @property
    def do_cfg(self) -> bool:
        """Guidance 1 is the conditional prediction alone: one branch, no unconditional forward."""
        return self.guidance_scale != 1.0


@dataclass
class PipelineState:
    """Everything the stages produce, filled in order; a stage reads earlier fields and sets its own.

    encode prompt -> ``prompt_embeds``/``negative_embeds``; prepare timesteps -> ``timesteps``;
    prepare latents -> ``latents`` (and ``initial_noise``); denoise -> ``latents``; decode -> ``frames``.
    """

    request: GenerationRequest
    device: torch.device
    prompt_embeds: torch.Tensor | None = None  # [1, text_len, text_dim], zero-padded after the prompt
    negative_embeds: torch.Tensor | None = None  # same shape; None when guidance is off
    timesteps: torch.Tensor | None = None  # [steps] on device, as the scheduler sets them
    initial_noise: torch.Tensor | None = None  # [1, C, f, h, w] fp32, the seed's noise (kept for checks)
    latents: torch.Tensor | None = None  # [1, C, f, h, w] fp32
    frames: np.ndarray | None = None  # uint8 [F, H, W, 3]
    timings: dict[str, float] = field(default_factory=dict)  # stage name -> seconds
    step_seconds: list[float] = field(default_factory=list)  # per denoising step
