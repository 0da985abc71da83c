"""The LTX-Video family (Lightricks, 2B text-to-video, v0.9.1): presets, components, the official single-file release
layout, maps, configs and sampling defaults.

Facts come from the official repository (github.com/Lightricks/LTX-Video: ``Transformer3DModel``,
``CausalVideoAutoencoder``, ``RectifiedFlowScheduler``, ``configs/ltxv-2b-0.9.1.yaml``, ``ltx_video/inference.py``),
the published release Lightricks/LTX-Video (``ltx-video-2b-v0.9.1.safetensors`` plus ``text_encoder/`` and
``tokenizer/`` in the Diffusers layout) and diffusers (``LTXPipeline``, ``scripts/convert_ltx_to_diffusers.py``).

Why v0.9.1: it is the release diffusers' ``LTXPipeline`` serves with its timestep-conditioned VAE decoder, the one
the porting issue names; v0.9 has the same transformer and an older VAE (no timestep conditioning), and the v0.9.5+
releases change the VAE again and need ``LTXConditionPipeline``.
"""

from __future__ import annotations

import json
from pathlib import Path

from vidport.runtime.models.ltx_video.config import PRESETS as DIT_PRESETS
from vidport.runtime.models.ltx_video.config import LTXDiTConfig

from vidport.errors import UserError
from vidport.families import FamilySpec, Geometry, SSIMSpec

NAME = "ltx-video"
PRESETS = tuple(DIT_PRESETS)  # "2b", "tiny"
COMPONENTS = ("transformer", "vae", "text_encoder")
HERE = Path(__file__).parent
MAPS = HERE / "maps"
REFERENCE_KEYS = HERE / "reference"
OFFICIAL_CONFIGS = REFERENCE_KEYS / "official_configs.json"

# --- the official release layout -------------------------------------------------------------------
# One single file holds the transformer and the VAE under key prefixes, with its config in the safetensors
# metadata ("config": {"transformer", "vae", "scheduler"}); the T5 text encoder and its tokenizer sit beside it in
# the Diffusers layout.
PREFIXES = {"transformer": "model.diffusion_model.", "vae": "vae."}
TEXT_ENCODER_DIR = "text_encoder"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_GLOB = "*.safetensors"

OFFICIAL_TO_DIFFUSERS = {c: MAPS / f"official_to_diffusers_{c}.map" for c in COMPONENTS}
RELEASE = "vidport.runtime.models.ltx_video.release"
DIFFUSERS_TO_NATIVE = MAPS / "diffusers_to_native.map"

# --- sampling (official configs/ltxv-2b-0.9.1.yaml and ltx_video/inference.py) ---------------------------
SAMPLING = {
    "2b": {"height": 480, "width": 704, "num_frames": 121, "num_inference_steps": 40, "guidance_scale": 3.0},
    "tiny": {"height": 64, "width": 96, "num_frames": 9, "num_inference_steps": 3, "guidance_scale": 3.0},
}
DECODE_TIMESTEP = 0.05  # the VAE decoder's timestep conditioning (ltxv-2b-0.9.1.yaml decode_timestep)
DECODE_NOISE_SCALE = 0.025  # noise mixed into the latents before decoding (decode_noise_scale)
TEXT_LEN = 128  # T5 tokens (diffusers LTXPipeline max_sequence_length; the official pipeline's too)
NUM_TRAIN_TIMESTEPS = 1000


def official_configs(preset: str) -> dict:
    """The config the official single file of a preset carries in its metadata (official format)."""
    data = json.loads(OFFICIAL_CONFIGS.read_text())
    if preset not in data:
        raise UserError(f"{NAME} has no preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return data[preset]


# --- official configs -> Diffusers configs (plain data) ------------------------------------------------
def dit_config(preset: str) -> LTXDiTConfig:
    return DIT_PRESETS[preset]


def dit_config_from_official(cfg: dict) -> LTXDiTConfig:
    """The official ``Transformer3DModel`` config -> the DiT config. Variants the native model (and diffusers'
    ``LTXVideoTransformer3DModel``) does not implement are one-line errors naming the field."""
    fixed = {"positional_embedding_type": "rope", "qk_norm": "rms_norm", "standardization_norm": "rms_norm",
             "activation_fn": "gelu-approximate", "attention_bias": True, "norm_elementwise_affine": False,
             "positional_embedding_theta": 10000.0, "positional_embedding_max_pos": [20, 2048, 2048],
             "timestep_scale_multiplier": 1000}
    for key, want in fixed.items():
        if key in cfg and cfg[key] != want:
            raise UserError(f"official transformer config {key}={cfg[key]!r} is not supported (only {want!r})")
    out = LTXDiTConfig(in_channels=cfg.get("in_channels", 128), out_channels=cfg.get("out_channels") or
                       cfg.get("in_channels", 128), num_attention_heads=cfg["num_attention_heads"],
                       attention_head_dim=cfg["attention_head_dim"], num_layers=cfg["num_layers"],
                       caption_channels=cfg.get("caption_channels", 4096), norm_eps=cfg.get("norm_eps", 1e-6))
    if cfg.get("cross_attention_dim", out.dim) != out.dim:
        raise UserError(f"official transformer config cross_attention_dim={cfg['cross_attention_dim']} must equal "
                        f"num_attention_heads * attention_head_dim = {out.dim}")
    return out


def _blocks(blocks: list) -> list[tuple[str, dict]]:
    """[name, params] pairs; an integer params is a layer count (the official classes read it so)."""
    return [(name, params if isinstance(params, dict) else {"num_layers": params}) for name, params in blocks]


def vae_config_from_official(cfg: dict) -> dict:
    """The official ``CausalVideoAutoencoder`` config -> diffusers ``AutoencoderKLLTXVideo``'s.

    The official encoder and decoder are flat block lists; Diffusers groups them into stages. Encoder: each
    ``res_x`` starts a down stage at the current width, a ``compress_all`` after it is the stage's downsampler, a
    ``res_x_y`` its channel-growing ``conv_out``; the last ``res_x`` is the mid block. Decoder (listed from the
    output side): each ``res_x`` with the ``compress_all`` before it is an up stage (residual, multiplier = the
    upsampler's), the last ``res_x`` the mid block; the widths follow from ``decoder_base_channels`` times the
    multipliers. Supported: the block kinds of the v0.9 / v0.9.1 VAEs (res_x, res_x_y, compress_all)."""
    if cfg.get("dims", 3) != 3 or cfg.get("use_quant_conv", False) or \
            cfg.get("latent_log_var", "uniform") != "uniform" or cfg.get("norm_layer", "pixel_norm") != "pixel_norm":
        raise UserError("official VAE config: only dims=3, use_quant_conv=false, latent_log_var='uniform' and "
                        "norm_layer='pixel_norm' are supported (the released LTX-Video VAEs)")
    enc = _blocks(cfg.get("encoder_blocks") or cfg["blocks"])
    dec = _blocks(cfg.get("decoder_blocks") or cfg["blocks"])
    known = {"res_x", "res_x_y", "compress_all"}
    bad = sorted({n for n, _ in enc + dec} - known)
    if bad:
        raise UserError(f"official VAE config: block kind(s) {', '.join(bad)} not supported (only {sorted(known)})")

    width = cfg.get("encoder_base_channels", 128)
    stages: list[dict] = []
    for name, params in enc:
        if name == "res_x":
            stages.append({"layers": params["num_layers"], "width": width, "down": False})
        elif name == "compress_all":
            stages[-1]["down"] = True
            width *= params.get("multiplier", 1)
        else:  # res_x_y
            width *= params.get("multiplier", 2)
    down = stages[:-1]  # the last stage is the mid block

    ups: list[dict] = []
    for name, params in dec:
        if name == "res_x":
            ups.append({"layers": params["num_layers"], "noise": bool(params.get("inject_noise", False)),
                        "up": None})
        elif name == "compress_all":
            ups[-1]["up"] = params
        else:
            raise UserError("official VAE config: a res_x_y decoder block is not supported (v0.9.1 has none)")
    if any(u["up"] is None for u in ups[:-1]) or ups[-1]["up"] is not None:
        raise UserError("official VAE config: every decoder res_x but the innermost must be followed by a "
                        "compress_all (the v0.9.1 layout)")
    widths = [cfg.get("decoder_base_channels", 128)]
    for u in ups[:-1]:
        widths.append(widths[-1] * u["up"].get("multiplier", 1))
    return {
        "in_channels": cfg.get("in_channels", 3), "out_channels": cfg.get("out_channels", 3),
        "latent_channels": cfg["latent_channels"],
        "block_out_channels": [s["width"] for s in down],
        "decoder_block_out_channels": widths[1:],
        "layers_per_block": [s["layers"] for s in stages],
        "decoder_layers_per_block": [u["layers"] for u in ups],
        "spatio_temporal_scaling": [s["down"] for s in down],
        "decoder_spatio_temporal_scaling": [True for _ in ups[:-1]],
        "decoder_inject_noise": [u["noise"] for u in ups],
        "upsample_residual": [bool(u["up"].get("residual", False)) for u in ups[:-1]],
        "upsample_factor": [u["up"].get("multiplier", 1) for u in ups[:-1]],
        "timestep_conditioning": bool(cfg.get("timestep_conditioning", False)),
        "patch_size": cfg.get("patch_size", 1), "patch_size_t": 1, "resnet_norm_eps": 1e-6,
        "scaling_factor": cfg.get("scaling_factor", 1.0), "encoder_causal": True,
        "decoder_causal": bool(cfg.get("causal_decoder", False)),
    }


def vae_config(preset: str) -> dict:
    return vae_config_from_official(official_configs(preset)["vae"])


def scheduler_config(official: dict | None = None) -> dict:
    """diffusers ``FlowMatchEulerDiscreteScheduler`` config of the official ``RectifiedFlowScheduler`` with SD3
    shifting (resolution-dependent shift between base_shift at 1024 tokens and max_shift at 4096, stretched so
    that the last sigma is ``target_shift_terminal``), as diffusers' converter writes it for LTX-Video."""
    official = official or {}
    if official.get("shifting", "SD3") != "SD3":
        raise UserError(f"official scheduler shifting={official['shifting']!r} is not supported (only 'SD3')")
    return {"num_train_timesteps": official.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS),
            "use_dynamic_shifting": True, "base_shift": 0.95, "max_shift": 2.05, "base_image_seq_len": 1024,
            "max_image_seq_len": 4096, "shift_terminal": official.get("target_shift_terminal", 0.1)}


def text_encoder_config(preset: str) -> dict:
    """transformers T5 config of the text encoder: google/t5-v1_1-xxl (the release's text_encoder/); tiny: d_model
    = the tiny DiT's caption_channels."""
    base = {"vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
            "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
            "feed_forward_proj": "gated-gelu", "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6,
            "is_encoder_decoder": True, "tie_word_embeddings": False, "pad_token_id": 0, "eos_token_id": 1,
            "decoder_start_token_id": 0}
    if preset == "tiny":
        base.update(vocab_size=256, d_model=DIT_PRESETS["tiny"].caption_channels, d_kv=6, d_ff=48, num_layers=2,
                    num_heads=4, dropout_rate=0.0)
    return base


def build_component(component: str, preset: str, device: str = "cpu"):
    """The runtime's module for a component: native DiT, diffusers VAE, transformers T5 encoder."""
    import torch

    with torch.device(device):
        if component == "transformer":
            from vidport.runtime.models.ltx_video.model import LTXDiT

            return LTXDiT(dit_config(preset))
        if component == "vae":
            from diffusers import AutoencoderKLLTXVideo

            return AutoencoderKLLTXVideo(**vae_config(preset))
        if component == "text_encoder":
            from transformers import T5Config, T5EncoderModel

            return T5EncoderModel(T5Config(**text_encoder_config(preset)))
    raise UserError(f"{NAME} has no component {component!r}; components: {', '.join(COMPONENTS)}")


def native_transformer(config: dict):
    """The native LTXDiT for a Diffusers ``LTXVideoTransformer3DModel`` config."""
    from vidport.runtime.models.ltx_video.model import LTXDiT

    try:
        return LTXDiT(LTXDiTConfig.from_diffusers(config))
    except ValueError as e:
        raise UserError(f"transformer/config.json: {e}") from None


# --- recognizing an official release -----------------------------------------------------------------
def checkpoint_keys(path: Path) -> set[str] | None:
    """The tensor names of a safetensors file (header only), or None when it is not one."""
    from vidport.porting.sources import read_safetensors_header

    try:
        return {k for k in read_safetensors_header(Path(path)) if k != "__metadata__"}
    except Exception:  # noqa: BLE001 - any unreadable file is simply not a checkpoint of this family
        return None


def is_single_file(path: Path) -> bool:
    keys = checkpoint_keys(path) if Path(path).is_file() and Path(path).suffix == ".safetensors" else None
    return bool(keys) and any(k.startswith(PREFIXES["transformer"]) for k in keys) and \
        any(k.startswith(PREFIXES["vae"]) for k in keys)


def single_files(path: Path) -> list[Path]:
    """The single-file checkpoints (transformer and VAE under their prefixes) of a release folder or file."""
    path = Path(path)
    if path.is_file():
        return [path] if is_single_file(path) else []
    return [p for p in sorted(path.glob(CHECKPOINT_GLOB)) if is_single_file(p)]


def release_root(path: Path) -> Path:
    """The folder of a release given as its folder or as its single file."""
    path = Path(path)
    return path.parent if path.is_file() else path


def is_official_release(path: Path) -> bool:
    path = Path(path)
    return (path.is_dir() or path.suffix == ".safetensors") and bool(single_files(path))


def official_checkpoint(path: Path) -> Path:
    """The one single-file checkpoint of a release (its folder, or the file itself); a one-line error otherwise."""
    path = Path(path)
    found = single_files(path)
    if not found:
        from vidport.porting.sources import read_safetensors_header

        # a damaged file is no checkpoint to the search above: name its damage (truncated, bad header) instead
        for candidate in [path] if path.is_file() else sorted(path.glob(CHECKPOINT_GLOB)):
            read_safetensors_header(candidate)
        raise UserError(f"{path}: no LTX-Video single-file checkpoint (a .safetensors holding the transformer "
                        f"under {PREFIXES['transformer']!r} and the VAE under {PREFIXES['vae']!r})")
    if len(found) > 1:
        raise UserError(f"{path}: several single-file checkpoints ({', '.join(p.name for p in found)}); pass the "
                        f"one to convert as the release, e.g. {found[-1]}")
    return found[0]


def official_component_file(path: Path, component: str) -> Path:
    """The file of a component; for the transformer and VAE a ``FILE#PREFIX`` spec (``porting.sources``)."""
    if component in PREFIXES:
        return Path(f"{official_checkpoint(path)}#{PREFIXES[component]}")
    if component == "text_encoder":
        folder = release_root(path) / TEXT_ENCODER_DIR
        if not folder.is_dir():
            raise UserError(f"{release_root(path)}: official release is missing {TEXT_ENCODER_DIR}/")
        return folder
    raise UserError(f"{path}: official release has no weights component {component!r}; "
                    f"choose one of {', '.join(COMPONENTS)}")


# --- the family contract (vidport.families) -------------------------------------------------------------
SPEC = FamilySpec(
    name=NAME,
    presets=PRESETS,
    components=COMPONENTS,
    folder=HERE,
    release=RELEASE,
    is_official_release=is_official_release,
    official_component_file=official_component_file,
    official_to_diffusers=OFFICIAL_TO_DIFFUSERS,
    diffusers_to_native=DIFFUSERS_TO_NATIVE,
    build_component="vidport.runtime.models.ltx_video.family:build_component",
    native_transformer="vidport.runtime.models.ltx_video.family:native_transformer",
    tiny_release="ltx-video-tiny",
    pipeline_class="LTXPipeline",
    pipeline="vidport.runtime.models.ltx_video.pipeline",
    # the VAE compresses time 8x and space 32x (8x downsampling x 4x4 patches), the DiT patchifies 1x1x1: 8k+1
    # frames, sizes multiple of 32; the T5 text is padded to 128 tokens
    geometry=Geometry(frame_stride=8, spatial_multiple=32, text_len=TEXT_LEN),
    parallel_plan="vidport.runtime.models.ltx_video.parallel:parallelize_ltx",
    parity_setups="vidport.runtime.models.ltx_video.parity:SETUPS",
    ssim=SSIMSpec(
        prompts=(("a cat walks on the grass in the sun", 0), ("a car drives through a city at night", 1)),
        thresholds={"cpu": (0.99, 0.98), "cuda": (0.95, 0.90)},
    ),
)
