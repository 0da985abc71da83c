"""Generic pipeline stages and the loop that runs them.

A stage is a small object with a ``name`` and ``__call__(state) -> state``; it holds the components it
needs (scheduler, model, ...) from construction. A family's pipeline is a list of stages: its own
stages (text encoder, VAE) plus these generic ones (timesteps, seeded latents, the denoising loop).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from vidport.runtime.pipeline.guidance import CFGStrategy, Denoiser
from vidport.runtime.pipeline.state import PipelineState
from vidport.runtime.pipeline.timing import StepClock, now


class Stage(Protocol):
    name: str

    def __call__(self, state: PipelineState) -> PipelineState: ...


def run_stages(stages: Sequence[Stage], state: PipelineState) -> PipelineState:
    """Run the stages in order, recording each one's wall time in ``state.timings[stage.name]`` and, on CUDA, the
    device's allocated-memory high-water mark after it (``state.info["peak_gib_after"]``; torch's running peak,
    which the stage that raised it reached)."""
    for stage in stages:
        start = now(state.device)
        state = stage(state)
        state.timings[stage.name] = now(state.device) - start
        if state.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(state.device) / 2**30
            state.info.setdefault("peak_gib_after", {})[stage.name] = round(peak, 3)
    return state


class PrepareTimesteps:
    """Set the scheduler's timesteps for this run (schedulers are stateful: reset on every run)."""

    name = "timesteps"

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def __call__(self, state: PipelineState) -> PipelineState:
        self.scheduler.set_timesteps(state.request.num_inference_steps, device=state.device)
        # a fixed begin index lets the scheduler skip looking the timestep up (a host sync) every step
        self.scheduler.set_begin_index(0)
        state.timesteps = self.scheduler.timesteps
        return state


class PrepareLatents:
    """Initial noise: one fp32 ``torch.randn`` of the latent shape from a generator seeded with ``seed``.

    By default (diffusers' seed semantics) the generator is a CPU one and the noise moves to the device
    afterwards, so a seed gives the same noise as ``pipe(..., generator=torch.Generator("cpu").manual_seed(seed))``
    on any device. ``on_device=True`` draws on a generator on the run's device, as official samplers do
    (Wan2.1's ``text2video.py``): the same noise as theirs on the same kind of device, but not across devices.
    On a CPU the two are the same draw. The leading batch dim does not change the values (one flat draw).

    ``latent_shape(request) -> (C, f, h, w)`` is the family's latent geometry (VAE strides).
    """

    name = "latents"

    def __init__(self, latent_shape: Callable[..., tuple[int, ...]], *, on_device: bool = False):
        self.latent_shape = latent_shape
        self.on_device = on_device

    def __call__(self, state: PipelineState) -> PipelineState:
        shape = (1, *self.latent_shape(state.request))
        where = state.device if self.on_device else torch.device("cpu")
        generator = torch.Generator(where).manual_seed(state.request.seed)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32, device=where)
        state.initial_noise = noise.cpu()  # kept on the host: no device memory for a copy nobody computes with
        state.latents = noise.to(state.device)
        return state


class Denoise:
    """The sampling loop: guided prediction, then one scheduler step, per timestep.

    ``model`` is any module with ``forward(x, timestep, **cond.kwargs) -> noise prediction`` (a family's
    native DiT, or a sequence-parallel wrapper with the same signature); ``cfg`` makes the guided prediction
    (``runtime.pipeline.guidance``). Latents stay fp32 between steps; the model sees them in its dtype.
    No host sync happens inside the loop (step times come from CUDA events).
    ``on_step(i, num_steps)`` is called after each step (progress bars).
    """

    name = "denoise"

    def __init__(self, model: Denoiser, scheduler, cfg: CFGStrategy, model_dtype: torch.dtype,
                 on_step: Callable[[int, int], None] | None = None):
        self.model, self.scheduler, self.cfg = model, scheduler, cfg
        self.model_dtype = model_dtype
        self.on_step = on_step

    @torch.no_grad()
    def __call__(self, state: PipelineState) -> PipelineState:
        request, latents = state.request, state.latents
        cond = state.cond.to(self.model_dtype)
        uncond = None if state.uncond is None else state.uncond.to(self.model_dtype)
        clock = StepClock(state.device)
        clock.start()
        num_steps = len(state.timesteps)
        for i, t in enumerate(state.timesteps):
            timestep = t.expand(latents.shape[0])
            noise = self.cfg(self.model, latents.to(self.model_dtype), timestep, cond, uncond,
                             request.guidance_scale)
            latents = self.scheduler.step(noise, t, latents, return_dict=False)[0]
            clock.lap()
            if self.on_step is not None:
                self.on_step(i, num_steps)
        state.latents = latents
        state.step_seconds = clock.seconds()
        return state


def uint8_frames(video: torch.Tensor):
    """A decoded video [3, F, H, W] in [-1, 1] -> uint8 numpy frames [F, H, W, 3]: ``(x + 1) / 2`` clamped to
    [0, 1], times 255, rounded (diffusers' ``postprocess_video``, rounded rather than truncated)."""
    pixels = ((video.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).cpu().numpy()
