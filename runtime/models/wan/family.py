"""The Wan2.1 text-to-video family: presets, components, release layouts, maps, sampling defaults.

Facts (file names, configs, defaults) come from the official release Wan-AI/Wan2.1-T2V-1.3B / 14B,
its code (Wan-Video/Wan2.1 ``wan/configs``) and the Diffusers repos Wan-AI/Wan2.1-T2V-*-Diffusers.
"""

from __future__ import annotations

import json
from pathlib import Path

from vidport.runtime.models.wan.config import PRESETS as DIT_PRESETS
from vidport.runtime.models.wan.config import WanDiTConfig

from vidport.errors import UserError
from vidport.families import FamilySpec, Geometry, SSIMSpec

NAME = "wan2.1-t2v"
PRESETS = tuple(DIT_PRESETS)
COMPONENTS = ("transformer", "vae", "text_encoder")
HERE = Path(__file__).parent
MAPS = HERE / "maps"
REFERENCE_KEYS = HERE / "reference"

# --- the official release layout -------------------------------------------------------------
OFFICIAL_FILES = {
    "transformer": "diffusion_pytorch_model.safetensors",  # or a sharded *.safetensors.index.json
    "vae": "Wan2.1_VAE.pth",
    "text_encoder": "models_t5_umt5-xxl-enc-bf16.pth",
    "tokenizer": "google/umt5-xxl",
}

# --- official -> Diffusers maps (committed data written by `port diff-keys --write-map`) --------
OFFICIAL_TO_DIFFUSERS = {c: MAPS / f"official_to_diffusers_{c}.map" for c in COMPONENTS}
RELEASE = "vidport.runtime.models.wan.release"  # the release format `port convert` reads
DIFFUSERS_TO_NATIVE = MAPS / "diffusers_to_native.map"

# --- sampling defaults (official wan/configs/shared_config.py and wan_t2v_*.py) ----------------
NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
SAMPLING = {
    "1.3b": {"height": 480, "width": 832, "num_frames": 81, "num_inference_steps": 50, "guidance_scale": 5.0,
             "flow_shift": 5.0},
    "14b": {"height": 720, "width": 1280, "num_frames": 81, "num_inference_steps": 50, "guidance_scale": 5.0,
            "flow_shift": 5.0},
    "tiny": {"height": 32, "width": 48, "num_frames": 5, "num_inference_steps": 3, "guidance_scale": 5.0,
             "flow_shift": 5.0},
}
NUM_TRAIN_TIMESTEPS = 1000
SAMPLE_FPS = 16  # wan_shared_cfg.sample_fps: the frame rate the official release writes its mp4s at


# --- the official sampler (wan/utils/fm_solvers_unipc.py FlowUniPCMultistepScheduler, as wan/text2video.py
# builds it: shift=1 at construction, the preset's shift given to set_timesteps) -----------------------------
def official_sampling_grid(num_steps: int, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
    """(sigmas [num_steps + 1] float32 ending in 0, timesteps [num_steps] int64) of the official sampler.

    Its training table is ``1 - linspace(1, 1/T, T)`` reversed, in float32: from ``1 - 1/T`` (0.999, stored
    as float32 0.99900001) down to 0. ``set_timesteps`` spaces ``linspace(table[0], table[-1], N + 1)[:-1]``
    (float64), shifts it ``shift * s / (1 + (shift - 1) * s)``, takes ``timesteps = sigmas * T`` truncated
    to int64 and appends a final sigma 0. (diffusers' flow-sigma UniPC spaces ``linspace(1, 1/T)`` instead
    since 0.34: with shift 5, 27 of 50 timesteps differ.)
    """
    import numpy as np

    T = num_train_timesteps
    table = (1.0 - np.linspace(1, 1 / T, T)[::-1]).astype(np.float32)
    sigma_max, sigma_min = float(table[0]), float(table[-1])
    sigmas = np.linspace(sigma_max, sigma_min, num_steps + 1)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    timesteps = (sigmas * T).astype(np.int64)  # the official torch .to(int64): truncation
    return np.concatenate([sigmas, [0.0]]).astype(np.float32), timesteps


def scheduler_config(preset: str = "1.3b", **overrides) -> dict:
    """The diffusers ``UniPCMultistepScheduler`` config of the official sampler: flow matching with the
    preset's shift (the one place this is written; `port convert`, the runtime and parity read it)."""
    return {**dict(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=NUM_TRAIN_TIMESTEPS,
                   flow_shift=SAMPLING.get(preset, SAMPLING["1.3b"])["flow_shift"]), **overrides}


# --- component configs --------------------------------------------------------------------------
def dit_config(preset: str) -> WanDiTConfig:
    return DIT_PRESETS[preset]


def vae_config(preset: str) -> dict:
    """diffusers AutoencoderKLWan config."""
    base = {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
            "temperal_downsample": [False, True, True], "dropout": 0.0}
    if preset == "tiny":
        base["base_dim"] = 8
    return base


def text_encoder_config(preset: str) -> dict:
    """transformers UMT5 config of the umT5-xxl encoder (the same for 1.3B and 14B)."""
    if preset == "tiny":
        return {"vocab_size": 256, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4,
                "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
                "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0, "layer_norm_epsilon": 1e-6,
                "is_encoder_decoder": True, "tie_word_embeddings": False, "pad_token_id": 0,
                "eos_token_id": 1, "decoder_start_token_id": 0}
    return {"vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
            "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
            "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0, "layer_norm_epsilon": 1e-6,
            "is_encoder_decoder": True, "tie_word_embeddings": False, "pad_token_id": 0, "eos_token_id": 1,
            "decoder_start_token_id": 0}


def build_component(component: str, preset: str, device: str = "cpu"):
    """The runtime's module for a component: native DiT, diffusers VAE, transformers umT5 encoder."""
    import torch

    with torch.device(device):
        if component == "transformer":
            from vidport.runtime.models.wan.model import WanDiT

            return WanDiT(dit_config(preset))
        if component == "vae":
            from diffusers import AutoencoderKLWan

            return AutoencoderKLWan(**vae_config(preset))
        if component == "text_encoder":
            from transformers import UMT5Config, UMT5EncoderModel

            return UMT5EncoderModel(UMT5Config(**text_encoder_config(preset)))
    raise UserError(f"{NAME} has no component {component!r}; components: {', '.join(COMPONENTS)}")


def native_transformer(config: dict):
    """The native WanDiT for a Diffusers ``WanTransformer3DModel`` config (built where the caller says:
    the loader builds it on the meta device)."""
    from vidport.runtime.models.wan.model import WanDiT

    return WanDiT(WanDiTConfig.from_diffusers(config, text_len=512))


# --- recognizing an official release ----------------------------------------------------------------
def is_official_release(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / OFFICIAL_FILES["vae"]).is_file() and (path / "config.json").is_file() \
        and not (path / "model_index.json").exists()


def official_component_file(path: Path, component: str) -> Path:
    path = Path(path)
    if component == "transformer":
        index = sorted(path.glob("diffusion_pytorch_model*.safetensors.index.json"))
        if index:
            return index[0]
        single = path / OFFICIAL_FILES["transformer"]
        if single.is_file():
            return single
        raise UserError(f"{path}: official release without {OFFICIAL_FILES['transformer']} (or its index)")
    if component not in OFFICIAL_FILES or component == "tokenizer":
        raise UserError(f"{path}: official release has no weights component {component!r}; "
                        f"choose one of {', '.join(COMPONENTS)}")
    f = path / OFFICIAL_FILES[component]
    if not f.is_file():
        raise UserError(f"{path}: official release is missing {OFFICIAL_FILES[component]}")
    return f


def read_official_config(path: Path) -> WanDiTConfig:
    cfg_path = Path(path) / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{cfg_path}: cannot read the official DiT config ({e})") from None
    return WanDiTConfig.from_official(cfg)


# --- the family contract (vidport.families): what generic code may ask of Wan2.1 T2V ----------------
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
    build_component="vidport.runtime.models.wan.family:build_component",
    native_transformer="vidport.runtime.models.wan.family:native_transformer",
    tiny_release="wan2.1-t2v-tiny",
    pipeline_class="WanPipeline",
    pipeline="vidport.runtime.models.wan.pipeline",
    # the VAE compresses time 4x and space 8x, the DiT patchifies 2x2: 4k+1 frames, sizes multiple of 16;
    # the official sampler pads the umT5 context to 512 tokens (wan/configs text_len)
    geometry=Geometry(frame_stride=4, spatial_multiple=16, text_len=512),
    parallel_plan="vidport.runtime.models.wan.parallel:parallelize_wan",
    parity_setups="vidport.runtime.models.wan.parity:SETUPS",
    official_render="vidport.runtime.models.wan.parity:official_render",
    ssim=SSIMSpec(
        prompts=(("a cat walks on the grass in the sun", 0), ("a car drives through a city at night", 1)),
        # CPU fp32 renders of the same weights differ only by float rounding between diffusers and vidport,
        # so the bar is high; GPU bf16 renders drift more (bf16 GEMMs, other kernels) and the bar is lower
        thresholds={"cpu": (0.99, 0.98), "cuda": (0.95, 0.90)},
    ),
)
