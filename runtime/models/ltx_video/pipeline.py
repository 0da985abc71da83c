"""LTX-Video (Lightricks, 2B v0.9 / v0.9.1) text-to-video pipeline: its components, its stages, and the list that
makes the pipeline.

    encode prompt (T5, 128 tokens + mask) -> seeded latents, packed into tokens -> timesteps (sigmas shifted by
    the video's length) -> denoise with CFG (native LTXDiT) -> unpack, denormalize -> decode (timestep-conditioned
    VAE, with decode noise) -> uint8 frames

Parity target: diffusers' ``LTXPipeline`` (``pipelines/ltx/pipeline_ltx.py``). With the same weights, seed
(``generator=torch.Generator("cpu").manual_seed(seed)``), prompts, size, steps, guidance, ``frame_rate`` and
``decode_timestep`` / ``decode_noise_scale``, the latents and frames are LTXPipeline's; in particular:

- text: tokenized to ``max_sequence_length`` 128 with padding; T5 runs on the ids *without* the attention mask (as
  LTXPipeline calls it); the mask goes to the DiT's cross-attention, where padded tokens get no weight. The
  denoising loop drops the trailing padding (``drop_common_padding``: the same values up to summation order, 40 keys
  instead of 128 for a 40-token prompt; shared by the branches of batched CFG, each branch's own otherwise, and then
  without a mask) unless a hook observes the DiT (parity runs).
- noise: ``randn`` of [1, C, f, h, w] on a CPU generator seeded with the seed, packed into tokens [1, f*h*w, C]
  (frame, height, width order); the decode noise is the next draw of the same generator.
- timesteps: ``sigmas = linspace(1, 1/N, N)`` and ``mu = calculate_shift(f*h*w, base_image_seq_len,
  max_image_seq_len, base_shift, max_shift)`` (the scheduler config's values) given to the flow-match Euler
  scheduler's ``set_timesteps``.
- guidance: ``uncond + g * (cond - uncond)`` in fp32 (the generic CFG strategies; the branches are independent
  samples, so the batch order does not change the values); the DiT gets ``rope_interpolation_scale =
  (vae temporal compression / frame_rate, spatial compression, spatial compression)``.
- decode: ``latents * latents_std / scaling_factor + latents_mean``; with a timestep-conditioned VAE (v0.9.1)
  ``(1 - s) * latents + s * noise`` with ``s = decode_noise_scale``, decoded at ``decode_timestep``;
  frames ``round(clamp(video / 2 + 0.5, 0, 1) * 255)`` (``postprocess_video``'s values, rounded as diffusers'
  ``numpy_to_pil``). The v0.9.1 decoder also injects noise inside its up blocks from torch's *global* RNG: the
  decode runs with the global RNG of its device seeded with the request's seed (the caller's RNG state is kept),
  which is what the official inference's ``seed_everething(seed)`` and ``torch.manual_seed(seed)`` before an
  ``LTXPipeline`` call give.

Defaults: ``sampling_defaults`` gives the family's ``SAMPLING`` per preset, ``DECODE_TIMESTEP`` /
``DECODE_NOISE_SCALE``, and this module's ``NEGATIVE_PROMPT`` and ``FRAME_RATE`` (the mp4's fps). The official facts
for 2B v0.9.1: Lightricks/LTX-Video ``inference.py`` at the v0.9.1 release (commit 925516e, 2024-12-19) defaults to
height 480, width 704, 121 frames, 40 steps, guidance 3, frame rate 25, the negative prompt "worst quality,
inconsistent motion, blurry, jittery, distorted", decode timestep 0.05 and decode noise scale 0.025;
``configs/ltxv-2b-0.9.1.yaml`` (added later) has the same steps, guidance and decode settings. LTXPipeline's own
defaults differ (512x704, 161 frames, 50 steps, decode timestep 0, no decode noise).

What the runtime does NOT reproduce of the official 0.9.1 inference, because the parity target is diffusers'
LTXPipeline, which lacks it:

- spatio-temporal guidance (STG): the official config adds ``stg_scale`` 1 with ``skip_block_list`` [19]
  (mode "attention_values": block 19's self-attention output replaced by its values in a third forward pass) and
  rescales the guided prediction toward the conditional one's std (``rescaling_scale`` 0.7). Here guidance is
  plain CFG, so the same seed gives a different video from the official script's.
- the official encode passes the attention mask to T5 itself (LTXPipeline does not), draws the noise on a generator
  on the run's device (LTXPipeline: a CPU one; ``noise="official"`` is refused), and runs the VAE in bf16 (here fp32).

Request geometry (``family.SPEC.geometry``): frames ``8k + 1`` (the VAE's temporal compression),
height and width multiples of 32 (its spatial compression; the DiT's patch is 1), ``text_len`` 128.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from vidport.runtime.kernels import fused
from vidport.runtime.models.ltx_video import family
from vidport.runtime.models.ltx_video.config import PRESETS, LTXDiTConfig
from vidport.runtime.models.ltx_video.model import pack_latents, unpack_tokens
from vidport.runtime.pipeline import (
    Conditioning,
    Denoise,
    PipelineState,
    PrepareLatents,
    Stage,
    uint8_frames,
    without_padding,
)

from vidport.errors import UserError

# --- official facts (module docstring); the family's (``family.SAMPLING``, ``DECODE_*``, ``TEXT_LEN``) plus: -------
FRAME_RATE = 25  # official inference.py --frame_rate at v0.9.1 (= LTXPipeline's default): the RoPE's and the mp4's
NEGATIVE_PROMPT = "worst quality, inconsistent motion, blurry, jittery, distorted"  # official inference.py default

# what LTX supports of the runtime's generic options (anything else is a one-line UserError)
SCHEDULERS = ("euler",)  # flow-match Euler, as configured in scheduler/ (dynamic shifting)
SAMPLER_GRIDS = ("diffusers",)
NOISE = ("diffusers",)
PRECISIONS = ("fast", "official")  # the same for LTX: the DiT computes in its dtype, as diffusers' does
# both guidance branches in one batch (as LTXPipeline runs them): at LTX's few thousand tokens a batch-1 forward is
# host-bound on a GPU, and batched CFG halves the launches (BENCHMARKS.md: 0.61x LTXPipeline end to end)
DEFAULT_CFG = "batched"
# no tiled VAE decode (runtime.vae_tiling): the v0.9.1 decoder injects random noise inside its up blocks on every
# call, so each tile would draw different noise than the same pixels get in the plain decode (vae_tiling=True is
# refused; auto never tiles)
TILED_DECODE = False


# ----------------------------------------------------------------------------------------------
# Components
# ----------------------------------------------------------------------------------------------
@dataclass
class LTXComponents:
    """The loaded modules. ``transformer`` is the native LTXDiT (or a wrapper with its forward signature)."""

    tokenizer: object
    text_encoder: torch.nn.Module | None  # None on a multi-GPU rank other than 0 (it is sent rank 0's encoding)
    transformer: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object
    dit_config: LTXDiTConfig
    dtype: torch.dtype  # the DiT's and the text encoder's compute dtype; the VAE stays fp32
    device: torch.device
    frame_rate: float = FRAME_RATE  # conditions the DiT's RoPE (and is the mp4's frame rate, ``fps``)
    decode_timestep: float = family.DECODE_TIMESTEP  # used when the VAE is timestep-conditioned (v0.9.1)
    decode_noise_scale: float = family.DECODE_NOISE_SCALE
    text_len: int = family.TEXT_LEN
    sampler_grid: str = "diffusers"
    noise: str = "diffusers"

    @property
    def preset(self) -> str | None:
        return preset_of(self.dit_config)


def preset_of(cfg: LTXDiTConfig) -> str | None:
    """The preset whose DiT has this shape (``tiny``, ``2b``), or None."""
    return next((name for name, known in PRESETS.items() if known == cfg), None)


def sampling_defaults(cfg: LTXDiTConfig) -> dict:
    """Per-preset defaults (official release facts, ``family.SAMPLING``); an unknown shape gets the defaults of the
    preset with the nearest width, so tiny weights never get real-size defaults."""
    name = preset_of(cfg) or min(family.SAMPLING, key=lambda p: abs(PRESETS[p].dim - cfg.dim))
    return dict(family.SAMPLING[name], negative_prompt=NEGATIVE_PROMPT, fps=FRAME_RATE,
                decode_timestep=family.DECODE_TIMESTEP, decode_noise_scale=family.DECODE_NOISE_SCALE)


def repo_sampling_defaults(folder: Path) -> dict:
    """The sampling defaults of a Diffusers-format repo's preset (read from its transformer config)."""
    from vidport.runtime.loading import read_diffusers_config

    folder = Path(folder) / "transformer"
    try:
        return sampling_defaults(LTXDiTConfig.from_diffusers(read_diffusers_config(folder)))
    except (ValueError, TypeError) as e:
        raise UserError(f"{folder / 'config.json'}: not an LTX-Video transformer config ({e})") from None


def check_options(scheduler: str | None, flow_shift: float | None, sampler_grid: str | None, noise: str,
                  precision: str) -> None:
    """One line for each option LTX-Video does not support, naming what it supports."""
    if scheduler not in (None, *SCHEDULERS):
        raise UserError(f"scheduler={scheduler!r} is not supported by LTX-Video; it samples with flow-match Euler "
                        "(scheduler=None or 'euler')")
    if sampler_grid not in (None, *SAMPLER_GRIDS):
        raise UserError(f"sampler_grid={sampler_grid!r} is not supported by LTX-Video; it samples on diffusers' "
                        "LTXPipeline grid (sampler_grid=None or 'diffusers')")
    if noise not in NOISE:
        raise UserError(f"noise={noise!r} is not supported by LTX-Video; its noise is drawn as diffusers' LTXPipeline "
                        "draws it, on a CPU generator (noise='diffusers')")
    if precision not in PRECISIONS:
        raise UserError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    if flow_shift is not None and (isinstance(flow_shift, bool) or not isinstance(flow_shift, (int, float))
                                   or not flow_shift > 0):
        raise UserError(f"flow_shift={flow_shift!r} must be a number > 0")


def load_components(folder: Path, *, dtype: torch.dtype, device: torch.device, scheduler: str | None = None,
                    flow_shift: float | None = None, sampler_grid: str | None = None, noise: str = "diffusers",
                    precision: str = "fast", text_encoder: bool = True) -> LTXComponents:
    """A Diffusers-format LTXPipeline repo folder -> components on ``device``. Every load is strict: the T5
    tokenizer and encoder (transformers), the native LTXDiT through the Diffusers -> native map, the VAE
    (diffusers, fp32) and the flow-match Euler scheduler from ``scheduler/``.

    ``scheduler``: None or "euler"; ``sampler_grid``: None or "diffusers"; ``noise``: "diffusers";
    ``precision``: "fast" or "official" (the same for LTX-Video); ``flow_shift`` only for a scheduler configured
    without dynamic shifting. Anything else is a one-line UserError.
    ``text_encoder=False``: no text encoder (``None``; a multi-GPU rank that is sent rank 0's prompt encoding)."""
    from diffusers import AutoencoderKLLTXVideo
    from transformers import AutoTokenizer, T5EncoderModel
    from vidport.runtime.loading import load_text_and_vae, load_transformer

    check_options(scheduler, flow_shift, sampler_grid, noise, precision)
    folder = Path(folder)
    sched = load_scheduler(folder / "scheduler", flow_shift)
    # the native LTXDiT, strictly through the family's Diffusers -> native map (every module in ``dtype``: the
    # Diffusers class keeps none in fp32)
    transformer = load_transformer(folder / "transformer", family.SPEC, dtype=dtype, device=device)
    tokenizer, encoder, vae = load_text_and_vae(  # the VAE in fp32, as Wan's
        folder, tokenizer_class=AutoTokenizer, text_encoder_class=T5EncoderModel, vae_class=AutoencoderKLLTXVideo,
        dtype=dtype, device=device, text_encoder=text_encoder)
    cfg = transformer.cfg
    patch = cfg.patch_size * cfg.patch_size * cfg.patch_size_t
    if vae.config.latent_channels * patch != cfg.in_channels:
        raise UserError(f"{folder}: the VAE's {vae.config.latent_channels} latent channels x the DiT's patch volume "
                        f"{patch} must be the DiT's in_channels {cfg.in_channels}")
    return LTXComponents(tokenizer=tokenizer, text_encoder=encoder, transformer=transformer,
                         vae=vae, scheduler=sched, dit_config=cfg, dtype=dtype, device=device)


def load_scheduler(folder: Path, flow_shift: float | None = None):
    """The flow-match Euler scheduler as configured in ``scheduler/``. ``flow_shift`` replaces the configured
    shift, which only a scheduler without dynamic shifting uses (LTX-Video's shifts by the video's length)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    path = Path(folder) / "scheduler_config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read the scheduler config ({e})") from None
    if cfg.get("_class_name") != "FlowMatchEulerDiscreteScheduler":
        raise UserError(f"{path}: scheduler {cfg.get('_class_name')!r} is not supported; LTX-Video samples with "
                        "FlowMatchEulerDiscreteScheduler")
    if flow_shift is not None:
        if cfg.get("use_dynamic_shifting"):
            raise UserError(f"flow_shift={flow_shift} is not supported here: {path} shifts the sigmas by the video's "
                            "length (use_dynamic_shifting); drop flow_shift")
        return FlowMatchEulerDiscreteScheduler.from_config(cfg, shift=flow_shift)
    return FlowMatchEulerDiscreteScheduler.from_config(cfg)


# ----------------------------------------------------------------------------------------------
# Geometry: the VAE's strides and the DiT's patches
# ----------------------------------------------------------------------------------------------
def latent_size(vae, request) -> tuple[int, int, int]:
    """(f, h, w) of the unpacked latents: the VAE compresses time 8x (frames 8k+1 -> k+1) and space 32x."""
    t, s = vae.temporal_compression_ratio, vae.spatial_compression_ratio
    return (request.num_frames - 1) // t + 1, request.height // s, request.width // s


def token_grid(cfg: LTXDiTConfig, size: tuple[int, int, int]) -> tuple[int, int, int]:
    f, h, w = size
    return f // cfg.patch_size_t, h // cfg.patch_size, w // cfg.patch_size


def pack(latents: torch.Tensor, cfg: LTXDiTConfig) -> torch.Tensor:
    """[B, C, F, H, W] -> tokens [B, f*h*w, C*pt*p*p] (LTXPipeline's packing; the DiT's ``pack_latents``)."""
    return pack_latents(latents, cfg)[0]


def unpack(tokens: torch.Tensor, cfg: LTXDiTConfig, grid: tuple[int, int, int]) -> torch.Tensor:
    """The inverse of ``pack``: [B, f*h*w, C*pt*p*p] -> [B, C, f*pt, h*p, w*p]."""
    return unpack_tokens(tokens, cfg, grid)


def rope_interpolation_scale(vae, frame_rate: float) -> tuple[float, float, float]:
    """What LTXPipeline gives the DiT for its RoPE positions: (temporal compression / frame rate, spatial compression,
    spatial compression) of the VAE."""
    return (vae.temporal_compression_ratio / frame_rate, vae.spatial_compression_ratio, vae.spatial_compression_ratio)


def calculate_shift(seq_len: int, base_seq_len: int, max_seq_len: int, base_shift: float, max_shift: float) -> float:
    """``mu`` of the scheduler's dynamic shifting: linear in the sequence length through (base_seq_len, base_shift)
    and (max_seq_len, max_shift) (LTXPipeline's, Flux's ``calculate_shift``)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return seq_len * slope + (base_shift - slope * base_seq_len)


# ----------------------------------------------------------------------------------------------
# LTX-specific stages
# ----------------------------------------------------------------------------------------------
class EncodePrompt:
    """T5: prompt (and, with guidance, the negative prompt) -> ``encoder_hidden_states`` [1, 128, 4096] and the
    boolean ``encoder_attention_mask`` [1, 128] the DiT's cross-attention uses. T5 runs without the mask and the
    padded positions keep their values (LTXPipeline's ``_get_t5_prompt_embeds``)."""

    name = "encode"

    def __init__(self, tokenizer, text_encoder, text_len: int, dtype: torch.dtype):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.text_len, self.dtype = text_len, dtype

    @torch.no_grad()
    def embed(self, text: str, device: torch.device) -> Conditioning:
        tokens = self.tokenizer([text], padding="max_length", max_length=self.text_len, truncation=True,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        hidden = self.text_encoder(tokens.input_ids.to(device))[0].to(self.dtype)
        return Conditioning({"encoder_hidden_states": hidden,
                             "encoder_attention_mask": tokens.attention_mask.bool().to(device)})

    def __call__(self, state: PipelineState) -> PipelineState:
        request = state.request
        state.cond = self.embed(request.prompt, state.device)
        state.uncond = self.embed(request.negative_prompt, state.device) if request.do_cfg else None
        return state


class ShiftedTimesteps:
    """LTXPipeline's schedule: ``sigmas = linspace(1, 1/N, N)`` shifted by ``mu`` for the latent video's length."""

    name = "timesteps"

    def __init__(self, scheduler, vae):
        self.scheduler, self.vae = scheduler, vae

    def __call__(self, state: PipelineState) -> PipelineState:
        s, steps = self.scheduler, state.request.num_inference_steps
        cfg = s.config
        mu = calculate_shift(int(np.prod(latent_size(self.vae, state.request))),
                             cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        s.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu, device=state.device)
        s.set_begin_index(0)  # no timestep look-up (a host sync) per step; the same steps as the look-up's
        state.timesteps = s.timesteps
        return state


class PrepareTokens(PrepareLatents):
    """The seed's noise [1, C, f, h, w] (``PrepareLatents``: a CPU generator, fp32), packed into tokens
    [1, f*h*w, C*pt*p*p], which the denoising loop and the scheduler work on. ``initial_noise`` stays unpacked."""

    def __init__(self, vae, cfg: LTXDiTConfig):
        channels = cfg.in_channels // (cfg.patch_size * cfg.patch_size * cfg.patch_size_t)
        super().__init__(lambda request: (channels, *latent_size(vae, request)))
        self.cfg = cfg

    def __call__(self, state: PipelineState) -> PipelineState:
        state = super().__call__(state)
        state.latents = pack(state.latents, self.cfg)
        return state


class LTXDenoiser:
    """The generic loop's ``model(x, timestep, **cond.kwargs)`` on the LTX DiT for one video: adds the token grid
    and the RoPE interpolation scale that LTXPipeline passes."""

    def __init__(self, transformer, grid: tuple[int, int, int], rope_interpolation_scale: tuple[float, ...]):
        self.transformer, self.grid, self.rope_interpolation_scale = transformer, grid, rope_interpolation_scale

    def __call__(self, x, timestep, encoder_hidden_states, encoder_attention_mask=None):
        f, h, w = self.grid
        return self.transformer(x, encoder_hidden_states, timestep, encoder_attention_mask, num_frames=f, height=h,
                                width=w, rope_interpolation_scale=self.rope_interpolation_scale)


class DenoiseTokens:
    """The generic ``Denoise`` loop, on an ``LTXDenoiser`` made for the request's geometry and
    ``rope_interpolation_scale``."""

    name = "denoise"

    def __init__(self, c: LTXComponents, cfg, on_step=None):
        self.c, self.cfg, self.on_step = c, cfg, on_step

    def __call__(self, state: PipelineState) -> PipelineState:
        c, vae = self.c, self.c.vae
        grid = token_grid(c.dit_config, latent_size(vae, state.request))
        model = LTXDenoiser(c.transformer, grid, rope_interpolation_scale(vae, c.frame_rate))
        encoded = state.cond, state.uncond
        if fused.unobserved(*c.transformer.modules()):  # parity hooks see the padded text, as LTXPipeline's DiT does
            # the text padding is dropped: 40 cross-attention keys, not 128, for a 40-token prompt
            state.cond, state.uncond = without_padding(self.cfg, *encoded, "encoder_hidden_states",
                                                       "encoder_attention_mask")
        try:
            return Denoise(model, c.scheduler, self.cfg, c.dtype, self.on_step)(state)
        finally:  # the state keeps the conditionings as encoded
            state.cond, state.uncond = encoded


class DecodeVideo:
    """Tokens -> uint8 frames [F, H, W, 3]: unpack, undo the latent normalization (``latents_mean`` /
    ``latents_std`` / ``scaling_factor``), in the model's dtype add the decode noise (the seed's generator's next
    draw, after the initial noise) and decode at ``decode_timestep`` (timestep-conditioned VAE), map to uint8. The
    decoder's own injected noise comes from the device's global RNG seeded with the request's seed (module
    docstring); the caller's RNG state is restored afterwards."""

    name = "decode"

    def __init__(self, c: LTXComponents):
        self.c = c

    @torch.no_grad()
    def __call__(self, state: PipelineState) -> PipelineState:
        c, vae, request = self.c, self.c.vae, state.request
        grid = token_grid(c.dit_config, latent_size(vae, request))
        z = unpack(state.latents, c.dit_config, grid)
        mean = vae.latents_mean.view(1, -1, 1, 1, 1).to(z.device, z.dtype)
        std = vae.latents_std.view(1, -1, 1, 1, 1).to(z.device, z.dtype)
        z = (z * std / vae.config.scaling_factor + mean).to(c.dtype)
        timestep = None
        if vae.config.timestep_conditioning:
            generator = torch.Generator("cpu").manual_seed(request.seed)
            torch.randn(state.initial_noise.shape, generator=generator, dtype=torch.float32)  # the initial noise
            noise = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
            timestep = torch.tensor([c.decode_timestep], device=z.device, dtype=z.dtype)
            scale = torch.tensor([c.decode_noise_scale], device=z.device, dtype=z.dtype)[:, None, None, None, None]
            z = (1 - scale) * z + scale * noise
        with seeded_global_rng(request.seed, z.device):
            video = vae.decode(z.to(vae.dtype), timestep, return_dict=False)[0]  # [1, 3, F, H, W] in [-1, 1]
        state.frames = uint8_frames(video[0])
        return state


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Within: torch's global RNG of the CPU and of ``device`` seeded with ``seed``; on leaving, both restored."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


# ----------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------
def t2v_stages(c: LTXComponents, *, cfg, on_step=None) -> list[Stage]:
    """LTX-Video T2V as a list of stages."""
    return [
        EncodePrompt(c.tokenizer, c.text_encoder, c.text_len, c.dtype),
        PrepareTokens(c.vae, c.dit_config),
        ShiftedTimesteps(c.scheduler, c.vae),
        DenoiseTokens(c, cfg, on_step),
        DecodeVideo(c),
    ]
