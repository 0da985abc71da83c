"""Wan2.1 T2V parity setups: what runs on each side of the harness, per component.

Each setup returns the two modules to hook, the two callables that run them on identical inputs, and
the name map from the reference's parameter names to the native's. The reference is always external
code: diffusers (``WanTransformer3DModel``, ``AutoencoderKLWan`` with weights converted by diffusers'
own ``convert_wan_vae_to_diffusers``, ``WanPipeline``) and transformers (``UMT5EncoderModel``) by default;
with ``reference="official"`` the official code itself (``WanModel`` and ``FlowUniPCMultistepScheduler``
from a user's checkout of Wan-Video/Wan2.1, never copied here) for the DiT and the whole sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
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
from vidport.runtime.models.wan import family
from vidport.runtime.models.wan.config import WanDiTConfig

from vidport.errors import UserError

PROMPT = "a cat walks on the grass in the sun"
NEGATIVE = "static, blurry details, worst quality"


def diffusers_to_native() -> NameMap:
    return NameMap.load(family.DIFFUSERS_TO_NATIVE)


def check_repo(repo: Path, component: str) -> Path:
    return component_folder(repo, component, "Wan")


# ----------------------------------------------------------------------------------------------
# transformer: native WanDiT (runtime loader) vs diffusers WanTransformer3DModel, same folder
# ----------------------------------------------------------------------------------------------
def transformer_inputs(text_dim: int, device, dtype, *, batch: int = 1, seed: int = 1):
    """Latents with a non-square token grid (3 x 6 x 10), two timesteps when batch=2, 7 text tokens."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, 3, 12, 20, generator=g)
    t = torch.tensor([999.0, 321.0][:batch] if batch <= 2 else [500.0] * batch)
    ctx = torch.randn(batch, 7, text_dim, generator=g)
    return x.to(device, dtype), t.to(device), ctx.to(device, dtype)


def official_state_dict(release: Path, component: str) -> dict[str, torch.Tensor]:
    from vidport.porting.sources import open_source

    src = open_source(str(family.official_component_file(Path(release), component)))
    return {k: src.get(k) for k in src.keys()}


def transformer_setup(repo: Path, *, dtype=torch.float32, device="cpu", native: nn.Module | None = None,
                      official: Path | None = None, reference: str = "diffusers",
                      official_root: Path | None = None) -> Setup:
    """``official``: an official release folder; the reference then holds the official DiT converted by
    diffusers' own ``convert_wan_transformer_to_diffusers`` (so the comparison covers `port convert` too),
    not the repo's tensors. ``reference="official"``: the official ``WanModel`` from the checkout at
    ``official_root`` instead (``official_transformer_setup``)."""
    if check_reference(reference, official_root) == "official":
        return official_transformer_setup(repo, official_root=official_root, release=official, dtype=dtype,
                                          device=device, native=native)
    from diffusers import WanTransformer3DModel
    from vidport.runtime.loading import load_transformer

    folder = check_repo(repo, "transformer")
    ref = WanTransformer3DModel.from_pretrained(folder, dtype=dtype)  # dtype layout as diffusers keeps it
    source = "repo"
    if official is not None:
        from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

        ref.load_state_dict(convert_wan_transformer_to_diffusers(official_state_dict(official, "transformer")),
                            strict=True)
        source = f"convert_wan_transformer_to_diffusers({Path(official).name})"
    ref = ref.to(device).eval()
    nat = native if native is not None else load_transformer(folder, family.SPEC, dtype=dtype, device=device)
    cfg = nat.cfg
    x, t, ctx = transformer_inputs(cfg.text_dim, device, dtype, batch=2)
    # diffusers' pipeline hands the model a context zero-padded to text_len; the native model pads itself
    ctx_padded = F.pad(ctx, (0, 0, 0, cfg.text_len - ctx.shape[1]))
    dv, _ = library_versions()
    return Setup("transformer", ref, lambda: ref(x, t, ctx_padded, return_dict=False)[0], nat,
                 lambda: nat(x, t, ctx), diffusers_to_native(),
                 f"diffusers {dv} WanTransformer3DModel ({source})", "vidport WanDiT")


# ----------------------------------------------------------------------------------------------
# VAE: the runtime's AutoencoderKLWan (converted repo) vs the official file converted by diffusers
# ----------------------------------------------------------------------------------------------
def reference_vae(official_vae: Path, config: dict, *, device="cpu"):
    """diffusers AutoencoderKLWan with the official ``Wan2.1_VAE.pth`` converted by diffusers' own
    ``convert_wan_vae_to_diffusers`` (the single-file loader's converter)."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    sd = torch.load(official_vae, map_location="cpu", weights_only=True)
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    vae = AutoencoderKLWan(**{k: v for k, v in config.items() if not k.startswith("_")})
    vae.load_state_dict(convert_wan_vae_to_diffusers(sd), strict=True)
    return vae.to(device).eval()


def only_diffusers(component: str, reference: str) -> None:
    """The VAE and umT5 setups compare with diffusers/transformers only (the official VAE file is already the
    VAE reference's source, through diffusers' converter)."""
    if reference != "diffusers":
        raise UserError(f"{family.NAME}: --reference official covers the transformer and the pipeline, not "
                        f"{component}; drop --reference for {component}")


def vae_setup(repo: Path, official: Path, *, device="cpu", frames: int = 5, height: int = 16,
              width: int = 24, reference: str = "diffusers", official_root: Path | None = None) -> Setup:
    import json

    only_diffusers("vae", reference)

    from vidport.runtime.loading import strict_from_pretrained

    folder = check_repo(repo, "vae")
    official_file = Path(official) / family.OFFICIAL_FILES["vae"] if Path(official).is_dir() else Path(official)
    if not official_file.is_file():
        raise UserError(f"{official_file}: no official VAE file; pass --official RELEASE_FOLDER")
    from diffusers import AutoencoderKLWan

    # the runtime loads the VAE strictly, in fp32 (runtime.models.wan.pipeline.load_components)
    nat = strict_from_pretrained(AutoencoderKLWan, folder, torch_dtype=torch.float32).to(device).eval()
    ref = reference_vae(official_file, json.loads((folder / "config.json").read_text()), device=device)
    g = torch.Generator().manual_seed(2)
    video = (torch.rand(1, 3, frames, height, width, generator=g) * 2 - 1).to(device)

    def run(vae):
        z = vae.encode(video).latent_dist.mode()
        return vae.decode(z, return_dict=False)[0]

    dv, _ = library_versions()
    return Setup("vae", ref, lambda: run(ref), nat, lambda: run(nat), IDENTITY_MAP,
                 f"diffusers {dv} AutoencoderKLWan + convert_wan_vae_to_diffusers({official_file.name})",
                 f"runtime AutoencoderKLWan ({folder})")


# ----------------------------------------------------------------------------------------------
# text encoder: the runtime's EncodePrompt vs diffusers WanPipeline's prompt encoding
# ----------------------------------------------------------------------------------------------
def text_encoder_setup(repo: Path, *, dtype=torch.float32, device="cpu", reference: str = "diffusers",
                       official_root: Path | None = None) -> Setup:
    only_diffusers("text_encoder", reference)
    from diffusers import WanPipeline
    from transformers import AutoTokenizer, UMT5EncoderModel
    from vidport.runtime.loading import strict_from_pretrained
    from vidport.runtime.models.wan.pipeline import EncodePrompt

    folder = check_repo(repo, "text_encoder")
    tok_folder = Path(repo) / "tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(tok_folder)
    nat = strict_from_pretrained(UMT5EncoderModel, folder, dtype=dtype).to(device).eval()
    ref = UMT5EncoderModel.from_pretrained(folder, dtype=dtype).to(device).eval()
    text_len = _text_len(repo)
    encode = EncodePrompt(tokenizer, nat, text_len, dtype)
    # diffusers' own prompt encoding, on a pipeline holding only the reference encoder and the tokenizer
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=ref, transformer=None, vae=None, scheduler=None)

    def run_ref():
        return pipe._get_t5_prompt_embeds(PROMPT, max_sequence_length=text_len, device=torch.device(device),
                                          dtype=dtype)

    dv, tv = library_versions()
    return Setup("text_encoder", ref, run_ref, nat, lambda: encode.embed(PROMPT, torch.device(device)),
                 IDENTITY_MAP, f"diffusers {dv} WanPipeline._get_t5_prompt_embeds + transformers {tv} "
                 "UMT5EncoderModel", "runtime EncodePrompt (UMT5EncoderModel)")


def _text_len(repo: Path) -> int:
    from vidport.runtime.loading import read_diffusers_config

    cfg = read_diffusers_config(Path(repo) / "transformer")
    return int(cfg.get("text_len", 512))


# ----------------------------------------------------------------------------------------------
# pipeline: VideoGenerator vs diffusers WanPipeline, same weights, same seed; latents after N steps
# ----------------------------------------------------------------------------------------------
def pipeline_setup(repo: Path, *, dtype=torch.float32, device="cpu", steps: int | None = None, seed: int = 0,
                   cfg: str = "serial", frames: int | None = None, height: int | None = None,
                   width: int | None = None, reference: str = "diffusers", official_root: Path | None = None,
                   official: Path | None = None) -> Setup:
    """The runtime against diffusers' ``WanPipeline`` (vidport in its diffusers-compatible mode: diffusers'
    sigma grid, CPU-generator noise), or with ``reference="official"`` against the official sampling loop
    (``official_pipeline_setup``)."""
    if check_reference(reference, official_root) == "official":
        return official_pipeline_setup(repo, official_root=official_root, release=official, dtype=dtype,
                                       device=device, steps=steps, seed=seed, cfg=cfg, frames=frames,
                                       height=height, width=width)
    from diffusers import WanPipeline

    repo = Path(repo)
    check_repo(repo, "transformer")
    gen, pipe, kw, d = pipelines_for_parity(repo, WanPipeline, dtype=dtype, device=device, cfg=cfg, frames=frames,
                                            height=height, width=width, steps=steps)

    def run_ref():
        latents = []

        def keep(p, i, t, tensors):
            latents.append(tensors["latents"].clone())
            return tensors

        pipe(PROMPT, negative_prompt=NEGATIVE, generator=torch.Generator("cpu").manual_seed(seed),
             callback_on_step_end=keep, output_type="np", **kw)
        return latents[-1]

    def run_native():
        gen.generate_video(PROMPT, negative_prompt=NEGATIVE, seed=seed, **kw)
        return gen.last_state.latents

    c = gen.components
    # hooked: text encoder and DiT (every step); the VAE has its own comparison (``vae_setup``): here it
    # would only see the latents' dtype noise amplified by its norms, which is not a port error
    ref = nn.ModuleDict({"text_encoder": pipe.text_encoder, "transformer": pipe.transformer})
    nat = nn.ModuleDict({"text_encoder": c.text_encoder, "transformer": c.transformer})
    name_map = prefixed({"text_encoder": IDENTITY_MAP, "transformer": diffusers_to_native()})
    dv, _ = library_versions()
    return Setup("pipeline", ref, run_ref, nat, run_native, name_map, f"diffusers {dv} WanPipeline",
                 f"vidport VideoGenerator (cfg={cfg})")


# ----------------------------------------------------------------------------------------------
# the official code as the reference: a user's checkout of Wan-Video/Wan2.1 (git clone; never copied here)
# ----------------------------------------------------------------------------------------------
REFERENCES = ("diffusers", "official")
OFFICIAL_REPO = "https://github.com/Wan-Video/Wan2.1"
OFFICIAL_MODULES = {"model": "wan.modules.model", "attention": "wan.modules.attention",
                    "scheduler": "wan.utils.fm_solvers_unipc"}


def check_reference(reference: str, official_root) -> str:
    if reference not in REFERENCES:
        raise UserError(f"{family.NAME}: unknown parity reference {reference!r}; choose one of {', '.join(REFERENCES)}")
    if reference == "official" and official_root is None:
        raise UserError(f"--reference official needs --official-root PATH: a checkout of the official code "
                        f"(git clone {OFFICIAL_REPO})")
    return reference


def sdpa_flash_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0, softmax_scale=None, q_scale=None,
                         causal=False, window_size=(-1, -1), deterministic=False, dtype=torch.bfloat16,
                         version=None):
    """The official ``wan.modules.attention.flash_attention`` contract computed with SDPA (the shim the
    official-reference setups install where flash-attn cannot run, e.g. on a CPU).

    Same layout and scaling: q [B, Lq, N, D], k/v [B, Lk, N, D] -> [B, Lq, N, D] in q's dtype; keys at and
    past ``k_lens[b]`` are left out (what the varlen kernel's cumulative lengths do); scale
    ``softmax_scale`` or 1/sqrt(D); ``q_scale`` multiplies q. Precision: where the official inputs are half
    (under autocast, v is), q and k are cast to v's dtype as the official code does before the kernel; fp32
    inputs stay fp32 (flash-attn itself takes only half precision: a limit of the kernel, not of the model's
    math, which is what a fp32 parity run compares)."""
    if q_lens is not None and bool((q_lens != q.shape[1]).any()):
        raise NotImplementedError("sdpa_flash_attention: query lengths shorter than the sequence are not used "
                                  "by Wan T2V and not supported by the shim")
    if tuple(window_size) != (-1, -1) or dropout_p:
        raise NotImplementedError("sdpa_flash_attention: windowed attention and dropout are not supported")
    out_dtype = q.dtype
    if v.dtype in (torch.float16, torch.bfloat16):
        q, k = q.to(v.dtype), k.to(v.dtype)
    if q_scale is not None:
        q = q * q_scale
    mask = None
    if k_lens is not None and bool((k_lens < k.shape[1]).any()):
        mask = (torch.arange(k.shape[1], device=k.device)[None, :] < k_lens.to(k.device)[:, None])[:, None, None]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                         is_causal=causal, scale=softmax_scale)
    return out.transpose(1, 2).to(out_dtype)


@dataclass
class OfficialCode:
    """The official modules loaded from a checkout, and what was substituted to run them here."""

    model: Any  # wan.modules.model
    scheduler: Any  # wan.utils.fm_solvers_unipc
    where: str  # 'PATH @ COMMIT'
    substituted: list[str]

    def describe(self, what: str) -> str:
        subs = f"; substituted: {'; '.join(self.substituted)}" if self.substituted else ""
        return f"official Wan2.1 {what} ({self.where}){subs}"


def official_code(root: Path, device) -> OfficialCode:
    """The official model and scheduler modules of the checkout at ``root``. Where flash-attn cannot run
    (a CPU, or not installed) the model's ``flash_attention`` is the exact SDPA shim, and the returned
    ``substituted`` says so (parity reports carry it in the reference's name)."""
    from vidport.parity.official import describe, load_module

    model = load_module(root, OFFICIAL_MODULES["model"])
    attention = load_module(root, OFFICIAL_MODULES["attention"])
    flash = getattr(attention, "FLASH_ATTN_2_AVAILABLE", False) or getattr(attention, "FLASH_ATTN_3_AVAILABLE", False)
    substituted = []
    if torch.device(device).type == "cuda" and flash:
        model.flash_attention = attention.flash_attention
    else:
        model.flash_attention = sdpa_flash_attention
        why = "a CPU" if torch.device(device).type != "cuda" else "flash-attn is not installed"
        substituted.append(f"wan.modules.attention.flash_attention -> vidport's SDPA shim "
                           f"(runtime/models/wan/parity.py sdpa_flash_attention; {why})")
    return OfficialCode(model, load_module(root, OFFICIAL_MODULES["scheduler"]), describe(root), substituted)


def official_dit(code: OfficialCode, *, repo: Path, release: Path | None, device) -> nn.Module:
    """The official ``WanModel`` in fp32 (the official generator keeps fp32 parameters and runs bf16 under
    autocast) with the release's tensors, or the repo's mapped back through the reversed official->Diffusers
    map when no release is given."""
    import inspect
    import json
    import warnings

    from vidport.runtime.loading import read_diffusers_config

    if release is not None:
        cfg = json.loads((Path(release) / "config.json").read_text())
        state = official_state_dict(Path(release), "transformer")
    else:
        folder = check_repo(repo, "transformer")
        cfg = WanDiTConfig.from_diffusers(read_diffusers_config(folder)).to_official()
        from safetensors.torch import load_file

        diffusers_sd = {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}
        state = NameMap.load(family.OFFICIAL_TO_DIFFUSERS["transformer"]).reverse().apply(diffusers_sd)
    accepted = inspect.signature(code.model.WanModel.__init__).parameters
    with warnings.catch_warnings():  # torch.cuda.amp deprecation notes of the official code
        warnings.simplefilter("ignore")
        model = code.model.WanModel(**{k: v for k, v in cfg.items() if k in accepted})
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.float().to(device).eval().requires_grad_(False)


def official_to_native(model: nn.Module) -> NameMap:
    """The official -> native map over the official model's tensors: the committed official->Diffusers map,
    then Diffusers->native (``NameMap.compose``)."""
    first = NameMap.load(family.OFFICIAL_TO_DIFFUSERS["transformer"])
    return NameMap.compose(first, diffusers_to_native(), model.state_dict().keys())


def autocast_like_official(dtype, device):
    """The official generator's precision: fp32 parameters under ``autocast(dtype)`` (bf16), or plain fp32."""
    import contextlib

    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def official_transformer_setup(repo: Path, *, official_root: Path, release: Path | None = None, dtype=torch.float32,
                               device="cpu", native: nn.Module | None = None) -> Setup:
    """Native WanDiT (official precision) vs the official ``WanModel`` on the same inputs as
    ``transformer_setup``: a list of two samples with their own timesteps, the unpadded text (the official
    model pads it)."""
    import warnings

    from vidport.runtime.loading import load_transformer
    from vidport.runtime.models.wan.model import WanDiT

    code = official_code(official_root, device)
    ref = official_dit(code, repo=repo, release=release, device=device)
    folder = check_repo(repo, "transformer")
    nat = native if native is not None else load_transformer(folder, family.SPEC, dtype=dtype, device=device,
                                                             keep_fp32=WanDiT.OFFICIAL_FP32_MODULES)
    nat.set_precision("official")
    cfg = nat.cfg
    x, t, ctx = transformer_inputs(cfg.text_dim, device, dtype, batch=2)
    tokens = x.shape[2] // cfg.patch_size[0] * (x.shape[3] // cfg.patch_size[1]) * (x.shape[4] // cfg.patch_size[2])

    def run_ref():
        with warnings.catch_warnings(), autocast_like_official(dtype, device):
            warnings.simplefilter("ignore")  # torch.cuda.amp deprecation notes of the official code
            return ref(list(x.float()), t=t, context=list(ctx), seq_len=tokens)

    source = f"{release.name} release" if release is not None else "repo tensors mapped back"
    return Setup("transformer", ref, run_ref, nat, lambda: nat(x, t, ctx), official_to_native(ref),
                 code.describe(f"WanModel ({source})"), "vidport WanDiT (precision official)")


def official_noise(shape: tuple[int, ...], seed: int, device) -> torch.Tensor:
    """The official sampler's initial noise (wan/text2video.py): one fp32 ``randn`` of [C, f, h, w] from a
    generator on the run's device seeded with ``seed``, drawn on that device."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(*shape, dtype=torch.float32, device=device, generator=generator)


def official_sampling_loop(model, scheduler, noise: torch.Tensor, context: list, context_null: list, *, steps: int,
                           shift: float, guide_scale: float, seq_len: int, device) -> torch.Tensor:
    """The official ``WanT2V.generate`` loop (wan/text2video.py), restated: the scheduler's timesteps for
    ``steps`` and ``shift`` (its ``set_timesteps(steps, device=, shift=)``); per timestep the conditional then
    the unconditional forward on the list ``[latents]``, guidance ``uncond + s * (cond - uncond)`` on the
    fp32 outputs, one ``scheduler.step``. ``model`` has the official signature
    ``model(x_list, t=, context=, seq_len=) -> list``; ``scheduler`` the official scheduler's API."""
    scheduler.set_timesteps(steps, device=device, shift=shift)
    latents = noise
    for t in scheduler.timesteps:
        timestep = torch.stack([t])
        cond = model([latents], t=timestep, context=context, seq_len=seq_len)[0]
        uncond = model([latents], t=timestep, context=context_null, seq_len=seq_len)[0]
        guided = uncond + guide_scale * (cond - uncond)
        latents = scheduler.step(guided.unsqueeze(0), t, latents.unsqueeze(0), return_dict=False)[0].squeeze(0)
    return latents


def official_latents(c, code: OfficialCode, dit: nn.Module, *, prompt: str, negative: str, seed: int, dtype,
                     num_frames: int, height: int, width: int, num_inference_steps: int,
                     guidance_scale: float) -> torch.Tensor:
    """The official sampling loop's final latents [C, f, h, w] for a request: the official noise, the official
    scheduler from the checkout with the components' shift, ``dit`` (the official WanModel) under the official
    precision, conditioned on the runtime's umT5 embeddings of ``c`` (loaded components)."""
    import warnings

    from vidport.runtime.models.wan.pipeline import EncodePrompt, latent_shape
    from vidport.runtime.pipeline.validate import validate_request

    request = validate_request(prompt, negative, seed=seed, num_frames=num_frames, height=height, width=width,
                               num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
    shape = latent_shape(c.vae.config, c.dit_config.in_dim, request)
    pt, ph, pw = c.dit_config.patch_size
    seq_len = shape[1] // pt * (shape[2] // ph) * (shape[3] // pw)
    encode = EncodePrompt(c.tokenizer, c.text_encoder, c.dit_config.text_len, c.dtype)
    context, context_null = [encode.embed(prompt, c.device)[0]], [encode.embed(negative, c.device)[0]]
    scheduler = code.scheduler.FlowUniPCMultistepScheduler(num_train_timesteps=family.NUM_TRAIN_TIMESTEPS,
                                                           shift=1, use_dynamic_shifting=False)
    with torch.no_grad(), warnings.catch_warnings(), autocast_like_official(dtype, c.device):
        warnings.simplefilter("ignore")
        return official_sampling_loop(dit, scheduler, official_noise(shape, seed, c.device), context, context_null,
                                      steps=num_inference_steps, shift=c.scheduler.config.flow_shift,
                                      guide_scale=guidance_scale, seq_len=seq_len, device=c.device)


def official_render(repo: Path, settings, *, official_root: Path, device="cpu", dtype: str = "fp32",
                    backend: str = "sdpa-math") -> tuple:
    """An SSIM reference video made by the official code: the official sampling loop (``official_latents``:
    the official WanModel and FlowUniPCMultistepScheduler from the checkout, the official noise), decoded by
    the repo's ``AutoencoderKLWan`` (the official WanVAE hard-codes the released VAE's size; the two are
    bit-exact on the same file, ``vae_setup``) and quantized as the official ``cache_video`` does
    (clamp to [-1, 1], ``(x + 1) / 2 * 255``, cast to uint8: floored). Returns (uint8 frames [F, H, W, 3],
    the reference implementation's description for the metadata)."""
    from vidport.runtime.generator import VideoGenerator

    gen = VideoGenerator.from_pretrained(repo, dtype=dtype, device=device, attention_backend=backend,
                                         sampler_grid="official", noise="official", precision="official")
    c = gen.components
    code = official_code(official_root, device)
    dit = official_dit(code, repo=Path(repo), release=None, device=device)
    kw = {k: getattr(settings, k) for k in ("num_frames", "height", "width", "num_inference_steps",
                                            "guidance_scale")}
    latents = official_latents(c, code, dit, prompt=settings.prompt, negative=settings.negative_prompt,
                               seed=settings.seed, dtype=c.dtype, **kw)
    cfg = c.vae.config
    z = latents[None].to(c.vae.dtype)
    mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(z)
    std = torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(z)
    with torch.no_grad():
        video = c.vae.decode(z * std + mean, return_dict=False)[0][0].float()  # [3, F, H, W] in [-1, 1]
    frames = ((video.clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()
    gen.close()
    return frames, {"name": code.describe("sampling loop (WanModel + FlowUniPCMultistepScheduler, "
                                          "wan/text2video.py's loop)"),
                    "kind": "official", "checkout": code.where, "substituted": code.substituted,
                    "noise": "official (a generator on the device)", "text_encoder": "runtime umT5 (transformers)",
                    "decode": "diffusers AutoencoderKLWan", "frames": "floored, as the official cache_video"}


def official_pipeline_setup(repo: Path, *, official_root: Path, release: Path | None = None, dtype=torch.float32,
                            device="cpu", steps: int | None = None, seed: int = 0, cfg: str = "serial",
                            frames: int | None = None, height: int | None = None,
                            width: int | None = None) -> Setup:
    """VideoGenerator (official sigma grid, official noise, official precision) vs the official sampling loop
    with the official ``WanModel`` and ``FlowUniPCMultistepScheduler``: latents after N steps, the DiT hooked
    at every call. Both sides condition on the runtime's umT5 embeddings (the encoder has its own comparison,
    against transformers); the VAE is not part of the latents."""

    from vidport.runtime.generator import VideoGenerator

    repo = Path(repo)
    check_repo(repo, "transformer")
    gen = VideoGenerator.from_pretrained(repo, dtype="fp32" if dtype == torch.float32 else "bf16", device=device,
                                         attention_backend="sdpa-math", cfg=cfg, sampler_grid="official",
                                         noise="official", precision="official")
    code = official_code(official_root, device)
    ref = official_dit(code, repo=repo, release=release, device=device)
    c = gen.components
    d = dict(gen.defaults)
    kw = dict(num_frames=frames or d["num_frames"], height=height or d["height"], width=width or d["width"],
              num_inference_steps=steps or d["num_inference_steps"], guidance_scale=d["guidance_scale"])

    def run_ref():
        return official_latents(c, code, ref, prompt=PROMPT, negative=NEGATIVE, seed=seed, dtype=dtype, **kw)[None]

    def run_native():
        gen.generate_video(PROMPT, negative_prompt=NEGATIVE, seed=seed, **kw)
        return gen.last_state.latents

    name_map = prefixed({"transformer": official_to_native(ref)})
    return Setup("pipeline", nn.ModuleDict({"transformer": ref}), run_ref,
                 nn.ModuleDict({"transformer": c.transformer}), run_native, name_map,
                 code.describe("sampling loop (WanModel + FlowUniPCMultistepScheduler, wan/text2video.py's loop)"),
                 f"vidport VideoGenerator (cfg={cfg}; official grid, noise, precision)")


SETUPS = {"transformer": transformer_setup, "vae": vae_setup, "text_encoder": text_encoder_setup,
          "pipeline": pipeline_setup}
