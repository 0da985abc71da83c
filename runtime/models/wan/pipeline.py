"""Wan2.1 text-to-video pipeline: its components, its stages, and the list that makes the pipeline.

    encode prompt (umT5) -> timesteps -> seeded latents -> denoise with CFG (DiT) -> decode (VAE)

Text encoding follows diffusers' ``WanPipeline`` (itself the official ``T5EncoderModel`` contract):
the prompt is cleaned (ftfy, HTML unescape, whitespace), tokenized to ``text_len`` (512) with padding,
encoded with its attention mask, and every position after the real tokens is set to zero.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from vidport.runtime.models.wan import family
from vidport.runtime.models.wan.config import WanDiTConfig
from vidport.runtime.pipeline import (
    Conditioning,
    Denoise,
    PipelineState,
    PrepareLatents,
    PrepareTimesteps,
    Stage,
    uint8_frames,
)

from vidport.errors import UserError

# the VAE decodes in spatial tiles when asked or when the frames are large (runtime.vae_tiling): the Wan VAE is
# convolutional in space and causal in time, so a crop of the latents decodes to the matching crop of the video
TILED_DECODE = True
SCHEDULERS = ("unipc", "euler")
SAMPLER_GRIDS = ("official", "diffusers")  # whose sigma grid the UniPC sampler steps on
NOISE = ("diffusers", "official")  # CPU generator (diffusers) or a generator on the run's device (official)


# ----------------------------------------------------------------------------------------------
# Components
# ----------------------------------------------------------------------------------------------
@dataclass
class WanComponents:
    """The loaded modules. ``transformer`` is anything with ``forward(x, timestep, context)``
    (the native WanDiT, or a sequence-parallel wrapper around it)."""

    tokenizer: object
    text_encoder: torch.nn.Module | None  # None on a multi-GPU rank other than 0 (it is sent rank 0's encoding)
    transformer: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object
    dit_config: WanDiTConfig
    dtype: torch.dtype  # the DiT's compute dtype (text encoder too); the VAE stays fp32
    device: torch.device
    sampler_grid: str = "diffusers"  # "official": the official sampler's sigmas on the scheduler
    noise: str = "diffusers"  # "official": the initial noise drawn as the official sampler draws it
    vae_tiling: bool | None = None  # tiled VAE decode: None = auto (runtime.vae_tiling.resolve_tiling)
    decode_group: object = None  # the process group whose ranks share a tiled decode (multi-GPU); None: this process

    @property
    def preset(self) -> str | None:
        return preset_of(self.dit_config)


def preset_of(cfg: WanDiTConfig) -> str | None:
    """The family preset whose DiT has this shape (``tiny``, ``1.3b``, ``14b``), or None."""
    for name, known in family.DIT_PRESETS.items():
        if known.replace(text_len=cfg.text_len) == cfg:
            return name
    return None


def sampling_defaults(cfg: WanDiTConfig) -> dict:
    """Per-preset defaults (official release facts in ``family.SAMPLING``); an unknown shape gets the
    defaults of the preset with the nearest width, so tiny weights never get real-size defaults."""
    name = preset_of(cfg) or min(family.DIT_PRESETS, key=lambda p: abs(family.DIT_PRESETS[p].dim - cfg.dim))
    return dict(family.SAMPLING[name], negative_prompt=family.NEGATIVE_PROMPT, fps=family.SAMPLE_FPS)


def load_components(folder: Path, *, dtype: torch.dtype, device: torch.device, scheduler: str | None = None,
                    flow_shift: float | None = None, sampler_grid: str | None = None, noise: str = "diffusers",
                    precision: str = "fast", vae_tiling: bool | None = None,
                    text_encoder: bool = True) -> WanComponents:
    """A Diffusers-format Wan T2V repo folder -> components on ``device``. Every load is strict.

    ``sampler_grid``: "official" (the official sampler's sigmas, ``family.official_sampling_grid``),
    "diffusers" (the installed diffusers scheduler's own) or None (official for UniPC, the official
    sampler; diffusers' for Euler, which the official code lacks). ``noise``: "diffusers" or "official"
    (``PrepareLatents``). ``precision``: the native DiT's bf16 recipe, "fast" or "official" (``WanDiT``).
    ``vae_tiling``: decode in spatial tiles (``DecodeVideo``): True, False, or None (auto).
    ``text_encoder=False``: no text encoder (``None``; a multi-GPU rank that is sent rank 0's prompt encoding)."""
    from transformers import AutoTokenizer, UMT5EncoderModel
    from vidport.runtime.loading import load_text_and_vae, load_transformer
    from vidport.runtime.models.wan.model import WanDiT
    from vidport.runtime.vae_tiling import check_option as check_tiling_option

    if noise not in NOISE:
        raise UserError(f"noise={noise!r} is not one of {', '.join(NOISE)}")
    check_tiling_option(vae_tiling)
    folder = Path(folder)
    sched = load_scheduler(folder / "scheduler", scheduler, flow_shift)
    grid = resolve_sampler_grid(sampler_grid, sched, folder / "scheduler")
    keep = WanDiT.OFFICIAL_FP32_MODULES if precision == "official" else ()
    transformer = load_transformer(folder / "transformer", family.SPEC, dtype=dtype, device=device, keep_fp32=keep)
    try:
        transformer.set_precision(precision)
    except ValueError as e:
        raise UserError(str(e)) from None
    from diffusers import AutoencoderKLWan

    tokenizer, encoder, vae = load_text_and_vae(
        folder, tokenizer_class=AutoTokenizer, text_encoder_class=UMT5EncoderModel, vae_class=AutoencoderKLWan,
        dtype=dtype, device=device, text_encoder=text_encoder)
    return WanComponents(tokenizer=tokenizer, text_encoder=encoder, transformer=transformer, vae=vae,
                         scheduler=sched, dit_config=transformer.cfg, dtype=dtype, device=device,
                         sampler_grid=grid, noise=noise, vae_tiling=vae_tiling)


# the settings of the official FlowUniPCMultistepScheduler (its defaults, as wan/text2video.py builds it) that a
# diffusers UniPCMultistepScheduler must share for the official grid to give the official sampler
OFFICIAL_UNIPC = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "solver_order": 2,
                  "predict_x0": True, "solver_type": "bh2", "lower_order_final": True, "disable_corrector": [],
                  "final_sigmas_type": "zero", "thresholding": False, "use_dynamic_shifting": False,
                  "solver_p": None}


def resolve_sampler_grid(grid: str | None, scheduler, where: Path) -> str:
    """None -> "official" for UniPC, "diffusers" otherwise; "official" needs a UniPC configured as the
    official sampler (flow prediction, order 2, bh2, ...), else one line naming the setting."""
    from diffusers import UniPCMultistepScheduler

    if grid not in (None, *SAMPLER_GRIDS):
        raise UserError(f"sampler_grid={grid!r} is not one of {', '.join(SAMPLER_GRIDS)}")
    unipc = isinstance(scheduler, UniPCMultistepScheduler)
    if grid is None:
        return "official" if unipc else "diffusers"
    if grid == "official":
        if not unipc:
            raise UserError(f"the official sigma grid is the official UniPC sampler's; the scheduler is "
                            f"{type(scheduler).__name__} (use --scheduler unipc, or --sampler-grid diffusers)")
        cfg = scheduler.config
        for key, want in OFFICIAL_UNIPC.items():
            if cfg.get(key, want) != want:
                raise UserError(f"{where}: {key}={cfg.get(key)!r}, but the official sampler has {want!r}; fix "
                                "scheduler_config.json or use --sampler-grid diffusers")
    return grid


def load_scheduler(folder: Path, kind: str | None = None, flow_shift: float | None = None):
    """The scheduler as configured in ``scheduler/`` (Wan: flow-matching UniPC), or ``kind`` ('unipc',
    'euler' = flow-match Euler) with the configured flow shift; ``flow_shift`` overrides the shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    path = Path(folder) / "scheduler_config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read the scheduler config ({e})") from None
    configured = {"UniPCMultistepScheduler": "unipc", "FlowMatchEulerDiscreteScheduler": "euler"}.get(
        cfg.get("_class_name"))
    kind = kind or configured
    if kind not in SCHEDULERS:
        raise UserError(f"{path}: scheduler {cfg.get('_class_name')!r} is not supported; "
                        f"pass scheduler= one of {', '.join(SCHEDULERS)}")
    shift = flow_shift if flow_shift is not None else cfg.get("flow_shift", cfg.get("shift"))
    num_train = cfg.get("num_train_timesteps", family.NUM_TRAIN_TIMESTEPS)
    if kind == "unipc":
        if configured == "unipc":
            return UniPCMultistepScheduler.from_config(cfg, **({"flow_shift": shift} if shift is not None else {}))
        return UniPCMultistepScheduler(**family.scheduler_config(num_train_timesteps=num_train,
                                                                 flow_shift=shift or 1.0))
    if configured == "euler":
        return FlowMatchEulerDiscreteScheduler.from_config(cfg, **({"shift": shift} if shift is not None else {}))
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train, shift=shift or 1.0)


# ----------------------------------------------------------------------------------------------
# Wan-specific stages
# ----------------------------------------------------------------------------------------------
def prompt_clean(text: str) -> str:
    """diffusers' Wan prompt cleaning: fix mojibake, unescape HTML twice, collapse whitespace."""
    import ftfy
    import regex

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip()


class EncodePrompt:
    """umT5: prompt (and, with guidance, the negative prompt) -> [1, text_len, text_dim] embeddings."""

    name = "encode"

    def __init__(self, tokenizer, text_encoder, text_len: int, dtype: torch.dtype):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.text_len, self.dtype = text_len, dtype

    @torch.no_grad()
    def embed(self, text: str, device: torch.device) -> torch.Tensor:
        tokens = self.tokenizer([prompt_clean(text)], padding="max_length", max_length=self.text_len,
                                truncation=True, add_special_tokens=True, return_attention_mask=True,
                                return_tensors="pt")
        ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
        hidden = self.text_encoder(ids, mask).last_hidden_state.to(self.dtype)
        # keep the real tokens, zero the padding (= trim to the real length, then zero-pad; no host sync)
        return torch.where(mask.bool()[..., None], hidden, hidden.new_zeros(()))

    def __call__(self, state: PipelineState) -> PipelineState:
        request = state.request
        state.cond = Conditioning({"context": self.embed(request.prompt, state.device)})
        state.uncond = Conditioning({"context": self.embed(request.negative_prompt, state.device)}) \
            if request.do_cfg else None
        return state


def latent_shape(vae_config, in_channels: int, request) -> tuple[int, int, int, int]:
    """(C, f, h, w) of the latents for the requested video: the Wan VAE's 4x time, 8x space strides."""
    t, s = vae_config.scale_factor_temporal, vae_config.scale_factor_spatial
    return in_channels, (request.num_frames - 1) // t + 1, request.height // s, request.width // s


class DecodeVideo:
    """Latents -> uint8 frames [F, H, W, 3]: undo the VAE's latent normalization, decode, map [-1, 1]
    to [0, 255] (rounded).

    ``tiling``: decode in overlapping spatial tiles (``runtime.vae_tiling``): True, False, or None (auto: for frames
    larger than 480x832, on any number of ranks). ``group``: the process group whose ranks share the decode (every
    rank runs this stage on the same latents and ends with the whole video): they split the tiles, or, untiled, the
    latent rows (``vae_split``: the plain decode's numbers within fp32 reassociation, and on CUDA within the TF32
    rounding cuDNN gives other call shapes); None: this process decodes all.
    ``state.info["vae_tiling"]`` / ``["vae_tiles"]`` / ``["vae_split"]`` say what ran."""

    name = "decode"

    def __init__(self, vae, tiling: bool | None = False, group=None):
        self.vae, self.tiling, self.group = vae, tiling, group

    @torch.no_grad()
    def __call__(self, state: PipelineState) -> PipelineState:
        from vidport.runtime import vae_tiling
        from vidport.runtime.models.wan import vae_split

        cfg = self.vae.config
        z = state.latents.to(self.vae.dtype)
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(z)
        inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(z)
        z = z / inv_std + mean
        tiled = vae_tiling.resolve_tiling(self.tiling, height=state.request.height, width=state.request.width)
        decode = self.decode_crop
        world = 1 if self.group is None else torch.distributed.get_world_size(self.group)
        if tiled:  # [1, 3, F, H, W] in [-1, 1]
            tile, stride = vae_tiling.default_tiling(cfg.scale_factor_spatial)
            state.info.update(vae_tiles=len(vae_tiling.plan_tiles(z.shape[-2], z.shape[-1], tile, stride)))
            video = vae_tiling.tiled_decode(decode, z, scale=cfg.scale_factor_spatial, tile=tile, stride=stride,
                                            group=self.group)
        elif world > 1 and vae_split.split_supported(self.vae) and z.shape[-2] >= world:
            # the plain decode's arithmetic, the rows shared by the ranks (runtime/models/wan/vae_split.py)
            video = vae_split.split_decode(self.vae, z, self.group)
            state.info.update(vae_split=world)
        else:
            video = decode(z)
        state.info.update(vae_tiling=tiled)
        state.frames = uint8_frames(video[0])  # [F, H, W, 3]
        return state

    def decode_crop(self, z: torch.Tensor) -> torch.Tensor:
        """The VAE's own decode of (a spatial crop of) the denormalized latents: all frames, its causal cache."""
        return self.vae.decode(z, return_dict=False)[0]


class OfficialTimesteps:
    """The official sampler's timesteps and sigmas on the diffusers UniPC scheduler.

    ``set_timesteps`` resets the scheduler's state for the run; its grid (which depends on the installed
    diffusers version) is then replaced by ``family.official_sampling_grid`` for the scheduler's shift. With
    the official grid, diffusers' UniPC step is the official ``FlowUniPCMultistepScheduler.step``: the same
    arithmetic on ``self.sigmas`` (kept on the CPU, as both keep them)."""

    name = "timesteps"

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def __call__(self, state: PipelineState) -> PipelineState:
        s, steps = self.scheduler, state.request.num_inference_steps
        s.set_timesteps(steps, device=state.device)
        sigmas, timesteps = family.official_sampling_grid(steps, s.config.flow_shift, s.config.num_train_timesteps)
        s.sigmas = torch.from_numpy(sigmas)
        s.timesteps = torch.from_numpy(timesteps).to(state.device)
        s.set_begin_index(0)  # no timestep look-up (a host sync) per step
        state.timesteps = s.timesteps
        return state


# ----------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------
def t2v_stages(c: WanComponents, *, cfg, on_step=None) -> list[Stage]:
    """Wan2.1 T2V as a list of stages."""
    in_channels = c.dit_config.in_dim
    return [
        EncodePrompt(c.tokenizer, c.text_encoder, c.dit_config.text_len, c.dtype),
        OfficialTimesteps(c.scheduler) if c.sampler_grid == "official" else PrepareTimesteps(c.scheduler),
        # official noise: wan/text2video.py draws it on a generator on the run's device
        PrepareLatents(lambda request: latent_shape(c.vae.config, in_channels, request),
                       on_device=c.noise == "official"),
        Denoise(c.transformer, c.scheduler, cfg, c.dtype, on_step),
        DecodeVideo(c.vae, tiling=c.vae_tiling, group=c.decode_group),
    ]


def repo_sampling_defaults(folder: Path) -> dict:
    """The sampling defaults of a Diffusers-format repo's preset (read from its transformer config)."""
    from vidport.runtime.loading import read_diffusers_config

    return sampling_defaults(WanDiTConfig.from_diffusers(read_diffusers_config(Path(folder) / "transformer")))
