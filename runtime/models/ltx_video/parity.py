"""LTX-Video parity setups: what runs on each side of the harness (``vidport.parity.harness``), per component.

Each setup returns a ``Setup``: the two modules to hook, the two callables that run them on identical inputs, and the
name map from the reference's parameter names to the native's. The reference is always external code:

- transformer: the native ``LTXDiT`` loaded by the runtime's loader (through ``maps/diffusers_to_native.map``) vs
  diffusers' ``LTXVideoTransformer3DModel`` (``from_pretrained`` on the same folder or, given the official release,
  holding the official single file's tensors converted by diffusers' own
  ``convert_ltx_transformer_checkpoint_to_diffusers``), on a batch of two with different timesteps, a non-square
  token grid and text masks of different valid lengths.
- vae: ``AutoencoderKLLTXVideo`` as the runtime's pipeline loads it (strictly, fp32) and calls it (the
  timestep-conditioned decode at the family's decode timestep, the decoder's injected noise from the global RNG) vs
  the same diffusers class holding the official single file's ``vae.`` tensors converted by diffusers' own
  ``convert_ltx_vae_checkpoint_to_diffusers``.
- text_encoder: the runtime's ``EncodePrompt`` (T5 from the converted ``text_encoder/``, loaded strictly) vs diffusers
  ``LTXPipeline._get_t5_prompt_embeds`` on transformers' ``T5EncoderModel`` from the release's own ``text_encoder/``
  and ``tokenizer/``; embeddings and the text mask.
- pipeline: ``VideoGenerator`` (diffusers-compatible mode) vs diffusers ``LTXPipeline(output_type="latent")``, same
  weights and seed: the packed latents after N steps, T5 and the DiT hooked at every call.

There is no official-code reference for LTX-Video (``reference="official"`` is a one-line error).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from vidport.parity.harness import (
    IDENTITY_MAP,
    Setup,
    component_folder,
    library_versions,
    pipelines_for_parity,
    prefixed,
)
from vidport.porting.namemap import NameMap
from vidport.runtime.loading import read_diffusers_config
from vidport.runtime.models.ltx_video import family
from vidport.runtime.pipeline.guidance import BatchedCFG

from vidport.errors import UserError

PROMPT = "a cat walks on the grass in the sun"
NEGATIVE = "worst quality, inconsistent motion, blurry, jittery, distorted"
REFERENCES = ("diffusers",)


def diffusers_to_native() -> NameMap:
    return NameMap.load(family.DIFFUSERS_TO_NATIVE)


def check_repo(repo: Path, component: str) -> Path:
    return component_folder(repo, component, "LTX-Video")


def check_reference(reference: str, official_root=None) -> None:
    if reference not in REFERENCES:
        raise UserError(f"{family.NAME}: parity compares with diffusers/transformers only (no official-code "
                        f"reference for LTX-Video); drop --reference {reference}")


def official_single_file(release: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the release's single file (transformer under ``model.diffusion_model.``, VAE under ``vae.``),
    as diffusers' single-file converters take it."""
    from safetensors.torch import load_file

    return load_file(str(family.official_checkpoint(Path(release))))


def rope_interpolation_scale(vae_config: dict, frame_rate: float) -> tuple[float, float, float]:
    """What the runtime's denoise stage (and LTXPipeline) gives the DiT for the repo's VAE (the pipeline's
    ``rope_interpolation_scale`` of the VAE built on the meta device)."""
    from diffusers import AutoencoderKLLTXVideo
    from vidport.runtime.models.ltx_video.pipeline import rope_interpolation_scale as of_vae

    with torch.device("meta"):
        vae = AutoencoderKLLTXVideo(**{k: v for k, v in vae_config.items() if not k.startswith("_")})
    return of_vae(vae, frame_rate)


# ----------------------------------------------------------------------------------------------
# transformer: native LTXDiT (runtime loader) vs diffusers LTXVideoTransformer3DModel
# ----------------------------------------------------------------------------------------------
GRID = (2, 3, 5)  # token grid (frames, height, width): not square, every axis > 1
TIMESTEPS = (937.5, 121.0)  # one per sample
VALID_TEXT = (11, 4)  # real tokens of each sample's caption (the rest is padding, masked out)


def transformer_inputs(in_channels: int, caption_channels: int, device, dtype, *, seed: int = 1):
    """Packed tokens [2, 2*3*5, C] (a non-square grid), two timesteps, a caption [2, 11, caption_channels] with
    masks of 11 and 4 valid tokens."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(2, GRID[0] * GRID[1] * GRID[2], in_channels, generator=g)
    text = torch.randn(2, max(VALID_TEXT), caption_channels, generator=g)
    mask = torch.zeros(2, max(VALID_TEXT), dtype=torch.long)
    for i, n in enumerate(VALID_TEXT):
        mask[i, :n] = 1
    t = torch.tensor(TIMESTEPS)
    return tokens.to(device, dtype), text.to(device, dtype), t.to(device), mask.to(device)


def transformer_setup(repo: Path, *, dtype=torch.float32, device="cpu", native: nn.Module | None = None,
                      official: Path | None = None, reference: str = "diffusers",
                      official_root: Path | None = None) -> Setup:
    """``official``: an official release (folder or single file); the reference then holds its transformer tensors
    converted by diffusers' ``convert_ltx_transformer_checkpoint_to_diffusers`` (so the comparison covers
    `port convert` too), not the repo's. ``native``: a native model to compare instead of the loader's."""
    check_reference(reference, official_root)
    from diffusers import LTXVideoTransformer3DModel
    from vidport.runtime.loading import load_transformer, quiet_library_loading
    from vidport.runtime.models.ltx_video.pipeline import FRAME_RATE

    folder = check_repo(repo, "transformer")
    with quiet_library_loading():
        ref = LTXVideoTransformer3DModel.from_pretrained(folder, dtype=dtype)
    source = "repo"
    if official is not None:
        from diffusers.loaders.single_file_utils import convert_ltx_transformer_checkpoint_to_diffusers

        converted = convert_ltx_transformer_checkpoint_to_diffusers(official_single_file(official))
        ref.load_state_dict(converted, strict=True)
        source = f"convert_ltx_transformer_checkpoint_to_diffusers({family.official_checkpoint(official).name})"
    ref = ref.to(device).eval().requires_grad_(False)
    nat = native if native is not None else load_transformer(folder, family.SPEC, dtype=dtype, device=device)
    cfg = nat.cfg
    x, text, t, mask = transformer_inputs(cfg.in_channels, cfg.caption_channels, device, dtype)
    scale = rope_interpolation_scale(read_diffusers_config(check_repo(repo, "vae")), FRAME_RATE)
    f, h, w = GRID

    def run_ref():
        return ref(x, text, t, mask, num_frames=f, height=h, width=w, rope_interpolation_scale=scale,
                   return_dict=False)[0]

    def run_native():
        return nat(x, text, t, mask, num_frames=f, height=h, width=w, rope_interpolation_scale=scale)

    dv, _ = library_versions()
    return Setup("transformer", ref, run_ref, nat, run_native, diffusers_to_native(),
                 f"diffusers {dv} LTXVideoTransformer3DModel ({source})", "vidport LTXDiT")


# ----------------------------------------------------------------------------------------------
# VAE: the runtime's AutoencoderKLLTXVideo (converted repo) vs the official file converted by diffusers
# ----------------------------------------------------------------------------------------------
def reference_vae(release: Path, config: dict, *, device="cpu"):
    """diffusers ``AutoencoderKLLTXVideo`` (the repo's config) holding the official single file's ``vae.`` tensors
    converted by diffusers' own ``convert_ltx_vae_checkpoint_to_diffusers`` (the single-file loader's converter,
    called directly: ``from_single_file`` would fetch a hub config)."""
    from diffusers import AutoencoderKLLTXVideo
    from diffusers.loaders.single_file_utils import convert_ltx_vae_checkpoint_to_diffusers

    vae = AutoencoderKLLTXVideo(**{k: v for k, v in config.items() if not k.startswith("_")})
    vae.load_state_dict(convert_ltx_vae_checkpoint_to_diffusers(official_single_file(release)), strict=True)
    return vae.float().to(device).eval().requires_grad_(False)


def vae_setup(repo: Path, official: Path | None = None, *, device="cpu", frames: int = 9, height: int = 64,
              width: int = 96, reference: str = "diffusers", official_root: Path | None = None) -> Setup:
    """Encode a random video (the latent mode), then decode it as the runtime's decode stage calls the VAE: with
    the timestep conditioning at the family's decode timestep; the decoder's injected noise comes from the global
    RNG, which the harness seeds identically before each side."""
    check_reference(reference, official_root)
    if official is None:
        raise UserError("the LTX-Video VAE comparison needs the official release (--official RELEASE): its single "
                        "file is the reference's source")
    from diffusers import AutoencoderKLLTXVideo
    from vidport.runtime.loading import quiet_library_loading, strict_from_pretrained
    from vidport.runtime.models.ltx_video.config import LTXDiTConfig
    from vidport.runtime.models.ltx_video.pipeline import sampling_defaults

    folder = check_repo(repo, "vae")
    # the runtime loads the VAE strictly and decodes in fp32 (runtime.models.ltx_video.pipeline.load_components)
    with quiet_library_loading():
        nat = strict_from_pretrained(AutoencoderKLLTXVideo, folder)
    nat = nat.float().to(device).eval().requires_grad_(False)
    config = read_diffusers_config(folder)
    ref = reference_vae(official, config, device=device)
    defaults = sampling_defaults(LTXDiTConfig.from_diffusers(read_diffusers_config(check_repo(repo, "transformer"))))
    decode_timestep = defaults["decode_timestep"]
    g = torch.Generator().manual_seed(2)
    video = (torch.rand(1, 3, frames, height, width, generator=g) * 2 - 1).to(device)
    timestep = torch.tensor([decode_timestep], device=device)

    def run(vae):
        z = vae.encode(video).latent_dist.mode()
        return vae.decode(z, timestep if vae.config.timestep_conditioning else None, return_dict=False)[0]

    dv, _ = library_versions()
    name = family.official_checkpoint(official).name
    return Setup("vae", ref, lambda: run(ref), nat, lambda: run(nat), IDENTITY_MAP,
                 f"diffusers {dv} AutoencoderKLLTXVideo + convert_ltx_vae_checkpoint_to_diffusers({name})",
                 f"runtime AutoencoderKLLTXVideo ({folder}; decode at timestep {decode_timestep})")


# ----------------------------------------------------------------------------------------------
# text encoder: the runtime's EncodePrompt vs diffusers LTXPipeline's prompt encoding on the release's T5
# ----------------------------------------------------------------------------------------------
def _embeddings_and_mask(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One tensor for the harness's ``<output>``: the embeddings with the text mask as one more channel."""
    return torch.cat([hidden.float(), mask.to(hidden.device).float()[..., None]], dim=-1)


def text_encoder_setup(repo: Path, *, official: Path | None = None, dtype=torch.float32, device="cpu",
                       reference: str = "diffusers", official_root: Path | None = None) -> Setup:
    """``official``: the release whose ``text_encoder/`` and ``tokenizer/`` the reference loads (so the comparison
    covers `port convert`'s copy of them); without it, the repo's own."""
    check_reference(reference, official_root)
    from diffusers import LTXPipeline
    from transformers import AutoTokenizer, T5EncoderModel
    from vidport.runtime.loading import quiet_library_loading, strict_from_pretrained
    from vidport.runtime.models.ltx_video.pipeline import EncodePrompt

    folder = check_repo(repo, "text_encoder")
    root = family.release_root(Path(official)) if official is not None else Path(repo)
    ref_folder = family.official_component_file(root, "text_encoder") if official is not None else folder
    with quiet_library_loading():
        nat_tokenizer = AutoTokenizer.from_pretrained(Path(repo) / "tokenizer")
        nat = strict_from_pretrained(T5EncoderModel, folder, dtype=dtype).to(device).eval()
        ref_tokenizer = AutoTokenizer.from_pretrained(root / family.TOKENIZER_DIR)
        ref = T5EncoderModel.from_pretrained(ref_folder, dtype=dtype).to(device).eval()
    encode = EncodePrompt(nat_tokenizer, nat, family.TEXT_LEN, dtype)
    # diffusers' own prompt encoding, on a pipeline holding only the reference encoder and its tokenizer
    pipe = LTXPipeline(tokenizer=ref_tokenizer, text_encoder=ref, transformer=None, vae=None, scheduler=None)

    def run_ref():
        hidden, mask = pipe._get_t5_prompt_embeds(PROMPT, max_sequence_length=family.TEXT_LEN,
                                                  device=torch.device(device), dtype=dtype)
        return _embeddings_and_mask(hidden, mask)

    def run_native():
        cond = encode.embed(PROMPT, torch.device(device)).kwargs
        return _embeddings_and_mask(cond["encoder_hidden_states"], cond["encoder_attention_mask"])

    dv, tv = library_versions()
    where = "the release's" if official is not None else "the repo's"
    return Setup("text_encoder", ref, run_ref, nat, run_native, IDENTITY_MAP,
                 f"diffusers {dv} LTXPipeline._get_t5_prompt_embeds + transformers {tv} T5EncoderModel "
                 f"({where} text_encoder/)", "runtime EncodePrompt (T5EncoderModel)")


# ----------------------------------------------------------------------------------------------
# pipeline: VideoGenerator vs diffusers LTXPipeline, same weights, same seed; latents after N steps
# ----------------------------------------------------------------------------------------------
class UncondFirstBatchedCFG(BatchedCFG):
    """Batched CFG with the branches in LTXPipeline's order, [uncond, cond] (the runtime's ``batched`` puts the
    conditional first): the DiT then sees exactly the reference's batches, call for call, so every module of it
    can be compared. The guidance is the runtime's (``combine``, fp32)."""

    name = "uncond-first"
    uncond_first = True


CFG_MODES = ("uncond-first", "serial", "batched")


def pipeline_setup(repo: Path, *, dtype=torch.float32, device="cpu", steps: int | None = None, seed: int = 0,
                   cfg: str = "uncond-first", frames: int | None = None, height: int | None = None,
                   width: int | None = None, reference: str = "diffusers", official_root: Path | None = None) -> Setup:
    """The runtime in its diffusers-compatible mode (LTXPipeline's sigmas, CPU-generator noise) against
    ``LTXPipeline``: the packed latents [1, f*h*w, C] after ``steps`` steps. T5 is hooked at every call on both
    sides. The DiT is hooked only with ``cfg="uncond-first"`` (the default): LTXPipeline runs both guidance branches
    as one batch, unconditional first, and only that strategy makes the same calls; with the runtime's own
    ``serial`` / ``batched`` strategies its calls do not line up with the reference's, and the comparison is T5 and
    the latents."""
    check_reference(reference, official_root)
    if cfg not in CFG_MODES:
        raise UserError(f"cfg={cfg!r}: choose one of {', '.join(CFG_MODES)}")
    from diffusers import LTXPipeline

    repo = Path(repo)
    check_repo(repo, "transformer")
    strategy = UncondFirstBatchedCFG() if cfg == "uncond-first" else cfg
    gen, pipe, kw, d = pipelines_for_parity(repo, LTXPipeline, dtype=dtype, device=device, cfg=strategy,
                                            frames=frames, height=height, width=width, steps=steps)

    def run_ref():
        return pipe(PROMPT, negative_prompt=NEGATIVE, generator=torch.Generator("cpu").manual_seed(seed),
                    frame_rate=d["fps"], output_type="latent", **kw).frames

    def run_native():
        gen.generate_video(PROMPT, negative_prompt=NEGATIVE, seed=seed, **kw)
        return gen.last_state.latents

    c = gen.components
    # the VAE has its own comparison (``vae_setup``); the latents are compared before it
    ref = {"text_encoder": pipe.text_encoder}
    nat = {"text_encoder": c.text_encoder}
    maps = {"text_encoder": IDENTITY_MAP}
    if cfg == "uncond-first":
        ref["transformer"], nat["transformer"], maps["transformer"] = pipe.transformer, c.transformer, \
            diffusers_to_native()
    dv, _ = library_versions()
    return Setup("pipeline", nn.ModuleDict(ref), run_ref, nn.ModuleDict(nat), run_native, prefixed(maps),
                 f"diffusers {dv} LTXPipeline", f"vidport VideoGenerator (cfg={cfg})")


SETUPS = {"transformer": transformer_setup, "vae": vae_setup, "text_encoder": text_encoder_setup,
          "pipeline": pipeline_setup}
