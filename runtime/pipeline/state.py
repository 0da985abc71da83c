"""The typed state that flows through a pipeline's stages, and the request that starts it."""

from __future__ import annotations

from collections.abc import Mapping
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


@dataclass(frozen=True)
class Conditioning:
    """What the denoiser is conditioned on, for one guidance branch: the keyword arguments of
    ``model(x, timestep, **cond.kwargs)``. A family's encode stage builds it (Wan: ``context``; a family
    with a text mask adds the mask, one with pooled embeddings adds those); shared stages and CFG
    strategies only cast, concatenate and pass it on, so they need no flag for any family."""

    kwargs: Mapping[str, torch.Tensor]

    def to(self, dtype: torch.dtype) -> Conditioning:
        """Floating tensors cast to the model's dtype; masks and ids unchanged."""
        return Conditioning({k: v.to(dtype) if v.is_floating_point() else v for k, v in self.kwargs.items()})

    def cat(self, other: Conditioning) -> Conditioning:
        """Both branches as one batch (batched CFG): every field concatenated along the batch dim."""
        import torch

        return Conditioning({k: torch.cat([v, other.kwargs[k]]) for k, v in self.kwargs.items()})


def drop_common_padding(conds: list[Conditioning | None], sequence: str, mask: str) -> list[Conditioning | None]:
    """The conditionings without the trailing positions that are padding in every one of them: ``sequence``
    [B, L, ...] and ``mask`` [B, L] (nonzero = a real position) cut to the last real position of any sample.

    For a model that gives masked positions no weight (a cross-attention with a key mask) this changes nothing
    but the summation order, and each attention then reads fewer keys (a 40-token prompt padded to 128: 40).
    When no padding is left in any of them (one branch, or prompts of one length) the mask itself is dropped: the
    attention then runs unmasked, which cuDNN does in 60% of the masked time at a 2B DiT's cross-attention
    (BENCHMARKS.md). Nothing is cut when some sample has no real position at all (such a sample attends to every
    position, as a reference's large negative bias on masked keys makes it). A model whose intermediates someone
    observes (parity hooks) should get the padded inputs, as the reference does. One host sync per call; None
    entries pass through."""
    import torch

    present = [c for c in conds if c is not None]
    if not present:
        return list(conds)
    masks = torch.cat([c.kwargs[mask].reshape(-1, c.kwargs[mask].shape[-1]).bool() for c in present])
    if not bool(masks.any(dim=-1).all()):
        return list(conds)
    keep = int(masks.any(dim=0).nonzero().max()) + 1
    unmasked = bool(masks[:, :keep].all())
    if keep == masks.shape[-1] and not unmasked:
        return list(conds)

    def cut(c: Conditioning) -> Conditioning:
        kwargs = dict(c.kwargs)
        kwargs[sequence] = kwargs[sequence][:, :keep]
        kwargs[mask] = kwargs[mask][..., :keep]
        if unmasked:
            del kwargs[mask]
        return Conditioning(kwargs)

    return [None if c is None else cut(c) for c in conds]


@dataclass
class PipelineState:
    """Everything the stages produce, filled in order; a stage reads earlier fields and sets its own.

    encode prompt -> ``cond``/``uncond``; prepare timesteps -> ``timesteps``;
    prepare latents -> ``latents`` (and ``initial_noise``); denoise -> ``latents``; decode -> ``frames``.
    """

    request: GenerationRequest
    device: torch.device
    cond: Conditioning | None = None  # the prompt's conditioning (batch 1)
    uncond: Conditioning | None = None  # the negative prompt's; None when guidance is off
    timesteps: torch.Tensor | None = None  # [steps] on device, as the scheduler sets them
    initial_noise: torch.Tensor | None = None  # [1, C, f, h, w] fp32 on the CPU, the seed's noise (kept for checks)
    latents: torch.Tensor | None = None  # [1, C, f, h, w] fp32
    frames: np.ndarray | None = None  # uint8 [F, H, W, 3]
    timings: dict[str, float] = field(default_factory=dict)  # stage name -> seconds
    step_seconds: list[float] = field(default_factory=list)  # per denoising step
    info: dict[str, object] = field(default_factory=dict)  # how stages ran, for the report (e.g. vae_tiling)
