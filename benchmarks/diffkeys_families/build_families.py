"""Build the data of the diff-keys generalization benchmark (tests/data/diffkeys_families/<family>/).

Per family it writes

- ``official_keys.txt``: (name, shape) of the family's OFFICIAL model class, imported from a checkout of the
  official repository that you pass on the command line and instantiated on the meta device at the released
  config, with the prefix the published checkpoint puts in front of the class's keys;
- ``diffusers_keys.txt``: (name, shape) of the Diffusers class at the released config, built on the meta device;
- ``truth.json``: what diffusers' own single-file converter for the family does to every official key, traced
  by running the installed converter on tensors whose values encode their provenance (see ``trace``);
- ``SOURCE.md``: where all of it came from.

No official code lives here or in the data: the checkout is imported from where it lies. Usage::

    python benchmarks/diffkeys_families/build_families.py \\
        --repo flux=PATH --repo ltx_video=PATH --repo mochi=PATH --repo hunyuan_video=PATH --repo sd35=PATH

PATH is a work tree of the official repository or a bare git directory (its HEAD's Python and config files
are then exported to a temporary folder first). ``--only FAMILY`` rebuilds one family.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import json
import math
import subprocess
import sys
import tempfile
import types
import unittest.mock
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "diffkeys_families"
BASE = 2 ** 24  # value = (source index + 1) * BASE + row: exact in float64 for any realistic key count and height


# ----------------------------------------------------------------------------------------------
# checkouts
# ----------------------------------------------------------------------------------------------
@dataclass
class Checkout:
    root: Path
    commit: str


def open_checkout(path: Path, workdir: Path) -> Checkout:
    """A work tree is used as it is; a bare git dir has its HEAD's text sources exported under ``workdir``."""
    if (path / "HEAD").is_file() and (path / "objects").is_dir():
        commit = subprocess.check_output(["git", f"--git-dir={path}", "rev-parse", "HEAD"], text=True).strip()
        names = subprocess.check_output(["git", f"--git-dir={path}", "ls-tree", "-r", "--name-only", "HEAD"],
                                        text=True).splitlines()
        root = workdir / path.parent.name
        for name in names:
            if not name.endswith((".py", ".yaml", ".json")):
                continue
            blob = subprocess.run(["git", f"--git-dir={path}", "show", f"HEAD:{name}"], capture_output=True)
            if blob.returncode == 0:
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(blob.stdout)
        return Checkout(root, commit)
    try:
        commit = subprocess.check_output(["git", "-C", str(path), "rev-parse", "HEAD"], text=True,
                                         stderr=subprocess.DEVNULL).strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        commit = "unknown (not a git work tree)"
    return Checkout(path, commit)


@contextlib.contextmanager
def importable(root: Path, fakes: dict[str, types.ModuleType] | None = None):
    """Put ``root`` first on sys.path (and fake modules into sys.modules) for the duration of the block."""
    before = set(sys.modules)
    sys.path.insert(0, str(root))
    saved = {name: sys.modules.get(name) for name in fakes or {}}
    sys.modules.update(fakes or {})
    try:
        yield
    finally:
        sys.path.remove(str(root))
        for name in set(sys.modules) - before:
            del sys.modules[name]
        for name, mod in saved.items():
            if mod is not None:
                sys.modules[name] = mod


def literal_kwargs(call: ast.Call) -> dict:
    """The literal keyword arguments of a call node (non-literal ones are left out)."""
    out = {}
    for kw in call.keywords:
        with contextlib.suppress(ValueError):
            out[kw.arg] = ast.literal_eval(kw.value)
    return out


def assigned_value(path: Path, name: str) -> ast.expr:
    """The value node of the first top-level or nested ``name = ...`` assignment in a source file."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node.value
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            return node.value
    raise LookupError(f"{path}: no assignment to {name}")


def fake_module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


def shapes_of(module: torch.nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict(keep_vars=True).items()}


# ----------------------------------------------------------------------------------------------
# the families: how each official listing is made, the Diffusers class and config, the converter
# ----------------------------------------------------------------------------------------------
@dataclass
class Family:
    name: str
    repo: str  # the official repository (github owner/name)
    official: Callable[[Path], tuple[dict[str, tuple[int, ...]], str]]  # checkout root -> (shapes, how)
    diffusers_class: str
    diffusers_config: Callable[[Path], dict]  # checkout root -> the released Diffusers config
    config_source: str
    converter: str  # function in diffusers.loaders.single_file_utils
    modes: str  # what the family exercises
    full_shapes: bool = False  # trace with the real shapes (zero-stride views): the converter reads a trailing dim
    keys_remembered: bool = False  # the converter tests its input's keys after emptying it (see _KeysRemembered)


class _KeysRemembered(dict):
    """A checkpoint that still answers ``key in checkpoint`` for its original keys once they were popped:
    diffusers 0.42.1's convert_cosmos_transformer_checkpoint_to_diffusers moves every key out of its input and only
    then tests the input for a Cosmos-1.0 key, so on a plain dict it always takes the 2.0 renames (and gives keys
    the Diffusers class lacks). With this it takes the 1.0 renames, which scripts/convert_cosmos_to_diffusers.py
    (the script that made the hub's Diffusers repos) applies to Cosmos-1.0 checkpoints."""

    def __init__(self, d: dict):
        super().__init__(d)
        self._original = frozenset(d)

    def __contains__(self, key) -> bool:
        return key in self._original or super().__contains__(key)


def official_flux(root: Path):
    # flux-dev's FluxParams as src/flux/util.py writes them, read from the source (importing util.py needs the
    # watermark and API packages and creates folders)
    configs = assigned_value(root / "src/flux/util.py", "configs")
    spec = next(v for k, v in zip(configs.keys, configs.values) if ast.literal_eval(k) == "flux-dev")
    params = next(kw.value for kw in spec.keywords if kw.arg == "params")
    kwargs = literal_kwargs(params)
    with importable(root / "src"):
        from flux.model import Flux, FluxParams

        with torch.device("meta"):
            model = Flux(FluxParams(**kwargs))
        shapes = shapes_of(model)
    return shapes, (f"`flux.model.Flux(FluxParams(**kw))` with kw = configs['flux-dev'].params of "
                    f"src/flux/util.py: {kwargs}; flux1-dev.safetensors stores the class's keys unprefixed "
                    "(util.load_flow_model loads it straight into Flux)")


def official_flux2(root: Path):
    # FLUX.2-dev: FLUX2_MODEL_INFO["flux.2-dev"]["params"] of src/flux2/util.py is Flux2Params() with its defaults
    # (importing util.py needs the text encoder's and the API's packages)
    with importable(root / "src"):
        from flux2.model import Flux2, Flux2Params

        with torch.device("meta"):
            model = Flux2(Flux2Params())
        shapes = shapes_of(model)
    return shapes, ("`flux2.model.Flux2(Flux2Params())` (src/flux2/util.py: FLUX2_MODEL_INFO['flux.2-dev'] uses the "
                    "defaults); flux2-dev.safetensors stores the class's keys unprefixed (util.load_flow_model "
                    "loads it straight into Flux2)")


def _cosmos_fakes() -> dict[str, types.ModuleType]:
    """Stand-ins for what cosmos_predict1's network modules import but a meta-device build does not run:
    Transformer Engine (its RMSNorm holds one ``weight`` of the normalized size, as TE's does; its attention op
    holds no parameters), Megatron's context-parallel helpers, torchvision's resize, the logger and the
    conditioner's ``DataType``. None of them holds a parameter the listing would miss."""
    import enum

    class RMSNorm(torch.nn.Module):
        def __init__(self, hidden_size, eps=1e-5, **_):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.empty(hidden_size))

    class DotProductAttention(torch.nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()

    class DataType(enum.Enum):
        IMAGE = "image"
        VIDEO = "video"

    pytorch = fake_module("transformer_engine.pytorch", RMSNorm=RMSNorm)
    attention = fake_module("transformer_engine.pytorch.attention", DotProductAttention=DotProductAttention,
                            apply_rotary_pos_emb=lambda *a, **k: None)
    pytorch.attention = attention
    transforms = fake_module("torchvision.transforms")
    quiet = fake_module("cosmos_predict1.utils.log", **{f: (lambda *a, **k: None)
                                                         for f in ("debug", "info", "warning", "critical", "error")})
    return {"transformer_engine": fake_module("transformer_engine", pytorch=pytorch),
            "transformer_engine.pytorch": pytorch, "transformer_engine.pytorch.attention": attention,
            "torchvision": fake_module("torchvision", transforms=transforms), "torchvision.transforms": transforms,
            "cosmos_predict1.utils.log": quiet,
            "cosmos_predict1.diffusion.conditioner": fake_module("cosmos_predict1.diffusion.conditioner",
                                                                 DataType=DataType),
            "cosmos_predict1.diffusion.module.parallel": fake_module("cosmos_predict1.diffusion.module.parallel",
                                                                     split_inputs_cp=lambda *a, **k: None)}


def official_cosmos(root: Path):
    # Cosmos-1.0-Diffusion-7B-Text2World (= Cosmos-Predict1-7B-Text2World): FADITV2Config of
    # cosmos_predict1/diffusion/config/base/net.py, read from the source (importing it needs the lazy-config stack)
    call = assigned_value(root / "cosmos_predict1/diffusion/config/base/net.py", "FADITV2Config")
    kwargs = literal_kwargs(call)
    # ... with the overrides of the released Text2World 7B experiment (learnable extra position embeddings)
    experiment = assigned_value(root / "cosmos_predict1/diffusion/config/inference/cosmos-1-diffusion-text2world.py",
                                "Cosmos_Predict1_Text2World_7B")
    net = next(kw.value for node in ast.walk(experiment) if isinstance(node, ast.Call)
               for kw in node.keywords if kw.arg == "net" and isinstance(kw.value, ast.Call))
    overrides = literal_kwargs(net)
    kwargs.update(overrides)
    with importable(root, _cosmos_fakes()):
        from cosmos_predict1.diffusion.networks.general_dit import GeneralDIT

        # the RoPE module puts two non-persistent buffers on CUDA (.cuda()); on the meta device that is a no-op
        with torch.device("meta"), unittest.mock.patch.object(torch.Tensor, "cuda", lambda self, *a, **k: self):
            model = GeneralDIT(**kwargs)
        shapes = shapes_of(model, "net.")
    return shapes, (f"`cosmos_predict1.diffusion.networks.general_dit.GeneralDIT(**kw)` with kw = FADITV2Config of "
                    "cosmos_predict1/diffusion/config/base/net.py updated with model.net of "
                    "Cosmos_Predict1_Text2World_7B "
                    f"(config/inference/cosmos-1-diffusion-text2world.py): {kwargs} (Transformer Engine, Megatron, "
                    "torchvision and the logger stood in by parameter-free fakes; TE's RMSNorm by one `weight`); the "
                    "published model.pt keeps the network under `net.` (the diffusion model's `self.net`); the "
                    "wrapper's own `logvar` buffers, which the converter drops, are not listed")


def official_ltx_video(root: Path):
    with importable(root):
        from ltx_video.models.transformers.transformer3d import Transformer3DModel
        from ltx_video.utils import diffusers_config_mapping as m

        config = dict(m.OURS_TRANSFORMER_CONFIG)
        with torch.device("meta"):
            model = Transformer3DModel.from_config(config)
        shapes = shapes_of(model, "model.diffusion_model.")
    return shapes, ("`ltx_video.models.transformers.transformer3d.Transformer3DModel.from_config("
                    "OURS_TRANSFORMER_CONFIG)` (ltx_video/utils/diffusers_config_mapping.py: the 2B v0.9 "
                    "transformer); the published single file ltx-video-2b-v0.9.safetensors keeps it under "
                    "`model.diffusion_model.` (Transformer3DModel.load_state_dict strips that prefix)")


def official_ltx_vae(root: Path):
    with importable(root):
        from ltx_video.models.autoencoders.causal_video_autoencoder import CausalVideoAutoencoder
        from ltx_video.utils import diffusers_config_mapping as m

        config = dict(m.OURS_VAE_CONFIG)
        with torch.device("meta"):
            model = CausalVideoAutoencoder.from_config(dict(config))
        shapes = shapes_of(model, "vae.")
    return shapes, ("`ltx_video.models.autoencoders.causal_video_autoencoder.CausalVideoAutoencoder.from_config("
                    "OURS_VAE_CONFIG)` (ltx_video/utils/diffusers_config_mapping.py: the v0.9 VAE) under `vae.`, "
                    "the prefix of the single file (CausalVideoAutoencoder.load_state_dict strips it). The file's "
                    "`per_channel_statistics.*` entries are not parameters of the class (it registers them as buffers "
                    "while loading), so they are not listed and the Diffusers `latents_mean`/`latents_std` are "
                    "`unfilled` in truth.json")


# The v0.9.1 VAE (ltx-video-2b-v0.9.1.safetensors): the official repository keeps no literal of it (the single file
# carries it in its metadata); this is that metadata's "vae" entry as diffusers' scripts/convert_ltx_to_diffusers.py
# quotes it. Its decoder is timestep-conditioned, injects noise and upsamples with residual depth-to-space.
LTX_VAE_091_OFFICIAL = {
    "_class_name": "CausalVideoAutoencoder", "dims": 3, "in_channels": 3, "out_channels": 3, "latent_channels": 128,
    "encoder_blocks": [["res_x", {"num_layers": 4}], ["compress_all", {}], ["res_x_y", 1], ["res_x", {"num_layers": 3}],
                       ["compress_all", {}], ["res_x_y", 1], ["res_x", {"num_layers": 3}], ["compress_all", {}],
                       ["res_x", {"num_layers": 3}], ["res_x", {"num_layers": 4}]],
    "decoder_blocks": [["res_x", {"num_layers": 5, "inject_noise": True}],
                       ["compress_all", {"residual": True, "multiplier": 2}],
                       ["res_x", {"num_layers": 6, "inject_noise": True}],
                       ["compress_all", {"residual": True, "multiplier": 2}],
                       ["res_x", {"num_layers": 7, "inject_noise": True}],
                       ["compress_all", {"residual": True, "multiplier": 2}],
                       ["res_x", {"num_layers": 8, "inject_noise": False}]],
    "scaling_factor": 1.0, "norm_layer": "pixel_norm", "patch_size": 4, "latent_log_var": "uniform",
    "use_quant_conv": False, "causal_decoder": False, "timestep_conditioning": True,
}
# diffusers' get_vae_config("0.9.1") in scripts/convert_ltx_to_diffusers.py (= diffusers/LTX-Video-0.9.1 vae/config)
LTX_VAE_091_DIFFUSERS = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 128, "block_out_channels": [128, 256, 512, 512],
    "decoder_block_out_channels": [256, 512, 1024], "layers_per_block": [4, 3, 3, 3, 4],
    "decoder_layers_per_block": [5, 6, 7, 8], "spatio_temporal_scaling": [True, True, True, False],
    "decoder_spatio_temporal_scaling": [True, True, True], "decoder_inject_noise": [True, True, True, False],
    "upsample_residual": [True, True, True], "upsample_factor": [2, 2, 2], "timestep_conditioning": True,
    "patch_size": 4, "patch_size_t": 1, "resnet_norm_eps": 1e-6, "scaling_factor": 1.0, "encoder_causal": True,
    "decoder_causal": False,
}
# the per-channel latent statistics the single file stores beside the VAE's parameters (buffers the official class
# registers while loading: CausalVideoAutoencoder.load_state_dict)
LTX_VAE_STATISTICS = ("channel", "mean-of-means", "std-of-means", "mean-of-stds")


def official_ltx_vae_091(root: Path):
    with importable(root):
        from ltx_video.models.autoencoders.causal_video_autoencoder import CausalVideoAutoencoder

        with torch.device("meta"):
            model = CausalVideoAutoencoder.from_config(json.loads(json.dumps(LTX_VAE_091_OFFICIAL)))
        shapes = shapes_of(model, "vae.")
    latent = LTX_VAE_091_OFFICIAL["latent_channels"]
    shapes.update({f"vae.per_channel_statistics.{s}": (latent,) for s in LTX_VAE_STATISTICS})
    return shapes, ("`ltx_video.models.autoencoders.causal_video_autoencoder.CausalVideoAutoencoder.from_config(cfg)` "
                    "with cfg the v0.9.1 VAE config that ltx-video-2b-v0.9.1.safetensors carries in its metadata "
                    "(as quoted by diffusers' scripts/convert_ltx_to_diffusers.py; LTX_VAE_091_OFFICIAL in "
                    "build_families.py), under `vae.`, plus the file's four `vae.per_channel_statistics.*` "
                    "vectors (channel, mean-of-means, std-of-means, mean-of-stds; buffers the class registers "
                    "while loading)")


def official_mochi(root: Path):
    # the model kwargs MochiSingleGPUPipeline's DiT factory passes (src/genmo/mochi_preview/pipelines.py);
    # attn_imports asks CUDA for the device properties at import, so it is faked (no attention runs here)
    kwargs = literal_kwargs(assigned_value(root / "src/genmo/mochi_preview/pipelines.py", "model_args"))
    fakes = {"genmo.lib.attn_imports": fake_module("genmo.lib.attn_imports", flash_varlen_attn=None, sage_attn=None,
                                                   sdpa_attn_ctx=contextlib.nullcontext)}
    with importable(root / "src", fakes):
        mod = importlib.import_module("genmo.mochi_preview.dit.joint_model.asymm_models_joint")
        with torch.device("meta"):
            model = mod.AsymmDiTJoint(**kwargs, attention_mode="sdpa")
        shapes = shapes_of(model)
    return shapes, (f"`genmo.mochi_preview.dit.joint_model.asymm_models_joint.AsymmDiTJoint(**model_args, "
                    f"attention_mode='sdpa')` with model_args from src/genmo/mochi_preview/pipelines.py: {kwargs} "
                    "(genmo.lib.attn_imports faked: it queries CUDA at import); the published dit.safetensors "
                    "stores the class's keys unprefixed")


def official_hunyuan_video(root: Path):
    with importable(root):
        from hyvideo.config import parse_args
        from hyvideo.modules.models import HUNYUAN_VIDEO_CONFIG, HYVideoDiffusionTransformer

        argv, sys.argv = sys.argv, [sys.argv[0]]
        try:
            args = parse_args()
        finally:
            sys.argv = argv
        with torch.device("meta"):
            model = HYVideoDiffusionTransformer(args, in_channels=args.latent_channels,
                                                out_channels=args.latent_channels, **HUNYUAN_VIDEO_CONFIG[args.model])
        shapes = shapes_of(model)
    return shapes, (f"`hyvideo.modules.models.HYVideoDiffusionTransformer(args, in_channels=out_channels="
                    f"{args.latent_channels}, **HUNYUAN_VIDEO_CONFIG['{args.model}'])` with args the defaults of "
                    "hyvideo.config.parse_args() (what hyvideo/inference.py builds); the published "
                    "mp_rank_00_model_states.pt holds the class's keys unprefixed under 'module'")


class _PublishedHeader:
    """What sd3_impls.BaseModel reads from the checkpoint to size MMDiTX: the few shapes and key names of
    sd3.5_medium.safetensors's header it asks for (BaseModel derives its config from them)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], keys: list[str]):
        self._shapes, self._keys = shapes, keys

    def get_tensor(self, key):
        return torch.empty(self._shapes[key], device="meta")

    def keys(self):
        return self._keys


SD35_MEDIUM_HEADER = {  # hidden 1536 = 64 * depth 24; pos_embed 384 x 384 patches; MMDiT-X self-attention in 0..12
    "model.diffusion_model.x_embedder.proj.weight": (1536, 16, 2, 2),
    "model.diffusion_model.pos_embed": (1, 384 * 384, 1536),
    "model.diffusion_model.y_embedder.mlp.0.weight": (1536, 2048),
    "model.diffusion_model.context_embedder.weight": (1536, 4096),
}
SD35_MEDIUM_KEYS = ["model.diffusion_model.joint_blocks.0.context_block.attn.ln_k.weight"] + [
    f"model.diffusion_model.joint_blocks.{i}.x_block.attn2.ln_k.weight" for i in range(13)]


def official_sd35(root: Path):
    with importable(root):
        import sd3_impls

        with torch.device("meta"):
            model = sd3_impls.BaseModel(file=_PublishedHeader(SD35_MEDIUM_HEADER, SD35_MEDIUM_KEYS),
                                        prefix="model.diffusion_model.", dtype=torch.float32, device="meta")
        shapes = shapes_of(model.diffusion_model, "model.diffusion_model.")
    return shapes, ("`sd3_impls.BaseModel(file=HEADER, prefix='model.diffusion_model.')` (what sd3_infer.py "
                    "builds), HEADER answering the shape/key queries BaseModel makes of sd3.5_medium.safetensors: "
                    f"{ {k.rsplit('model.', 1)[-1]: list(v) for k, v in SD35_MEDIUM_HEADER.items()} }, "
                    "ln_k present, x_block.attn2 in blocks 0..12; listing = its `diffusion_model` under "
                    "`model.diffusion_model.` (sd3_infer.py loads the file with prefix 'model.'; the model_sampling "
                    "buffer is not in the file)")


def official_lumina2(root: Path):
    # sample.py builds models.__dict__[train_args.model](in_channels=16, qk_norm=train_args.qk_norm,
    # cap_feat_dim=<Gemma-2-2B hidden size>); the released model is the 2B one. flash_attn is faked (no attention
    # runs here); apex is absent, so components.RMSNorm is the plain one (same parameters).
    flash = fake_module("flash_attn", flash_attn_varlen_func=None)
    padding = fake_module("flash_attn.bert_padding", index_first_axis=None, pad_input=None, unpad_input=None)
    with importable(root, {"flash_attn": flash, "flash_attn.bert_padding": padding}):
        import models

        with torch.device("meta"):
            model = models.NextDiT_2B_GQA_patch2_Adaln_Refiner(in_channels=16, qk_norm=True, cap_feat_dim=2304)
        shapes = shapes_of(model)
    return shapes, ("`models.NextDiT_2B_GQA_patch2_Adaln_Refiner(in_channels=16, qk_norm=True, cap_feat_dim=2304)` "
                    "as sample.py builds it for the released 2B model (cap_feat_dim: google/gemma-2-2b's hidden "
                    "size; flash_attn faked); the published consolidated.00-of-01.pth holds the class's keys "
                    "unprefixed (sample.py loads it strictly)")


def _ltx_diffusers_config(name: str) -> Callable[[Path], dict]:
    def read(root: Path) -> dict:
        with importable(root):
            from ltx_video.utils import diffusers_config_mapping as m

            return {k: v for k, v in getattr(m, name).items() if not k.startswith("_")}

    return read


FAMILIES = [
    Family("flux", "black-forest-labs/flux", official_flux, "diffusers.FluxTransformer2DModel",
           lambda root: dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                             num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                             guidance_embeds=True, axes_dims_rope=[16, 56, 56]),
           "black-forest-labs/FLUX.1-dev transformer/config.json",
           "convert_flux_transformer_checkpoint_to_diffusers",
           "fused qkv -> to_q/to_k/to_v; single-block linear1 -> to_q, to_k, to_v, proj_mlp (unequal sizes); "
           "final adaLN shift/scale halves swapped"),
    Family("flux2", "black-forest-labs/flux2", official_flux2, "diffusers.Flux2Transformer2DModel",
           lambda root: dict(patch_size=1, in_channels=128, num_layers=8, num_single_layers=48, attention_head_dim=128,
                             num_attention_heads=48, joint_attention_dim=15360, timestep_guidance_channels=256,
                             mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, eps=1e-6,
                             guidance_embeds=True),
           "black-forest-labs/FLUX.2-dev transformer/config.json",
           "convert_flux2_transformer_checkpoint_to_diffusers",
           "bias-free layers; modulation tables shared by all blocks, declared after them officially and before "
           "them in Diffusers, with the blocks' MLP inputs' shape; fused qkv split; the single-block fused "
           "qkv+SwiGLU input kept fused; final adaLN halves swapped. Added as a held-out check after the other "
           "families reached issue 18's targets: its first score was 94.3% with 19 confidently wrong keys"),
    Family("cosmos", "nvidia-cosmos/cosmos-predict1", official_cosmos, "diffusers.CosmosTransformer3DModel",
           lambda root: dict(in_channels=16, out_channels=16, num_attention_heads=32, attention_head_dim=128,
                             num_layers=28, mlp_ratio=4.0, text_embed_dim=1024, adaln_lora_dim=256,
                             max_size=(128, 240, 240), patch_size=(1, 2, 2), rope_scale=(2.0, 1.0, 1.0),
                             concat_padding_mask=True, extra_pos_embed_type="learnable"),
           "TRANSFORMER_CONFIGS['Cosmos-1.0-Diffusion-7B-Text2World'] of diffusers' "
           "scripts/convert_cosmos_to_diffusers.py "
           "(= nvidia/Cosmos-1.0-Diffusion-7B-Text2World transformer/config.json)",
           "convert_cosmos_transformer_checkpoint_to_diffusers",
           "sub-blocks flattened (blocks.blockN.blocks.0.block.attn -> transformer_blocks.N.attn1, "
           "blocks.2.block -> ff), adaLN-LoRA pairs (adaLN_modulation.1/.2 -> norm1.linear_1/_2), norms inside "
           "Sequentials (to_q.1 -> norm_q), the net. prefix, dropped buffers. Added as a held-out check after FLUX.2. "
           "The converter is traced with an input that remembers its keys: diffusers 0.42.1's tests for the "
           "Cosmos-1.0 layout after emptying its input and would apply the 2.0 renames (see _KeysRemembered)",
           keys_remembered=True),
    Family("ltx_video", "Lightricks/LTX-Video", official_ltx_video, "diffusers.LTXVideoTransformer3DModel",
           _ltx_diffusers_config("DIFFUSERS_TRANSFORMER_CONFIG"),
           "DIFFUSERS_TRANSFORMER_CONFIG in the official ltx_video/utils/diffusers_config_mapping.py "
           "(= Lightricks/LTX-Video transformer/config.json)",
           "convert_ltx_transformer_checkpoint_to_diffusers",
           "a leading prefix (model.diffusion_model.) plus a few renames (patchify_proj, adaln_single, q_norm)"),
    Family("ltx_vae", "Lightricks/LTX-Video", official_ltx_vae, "diffusers.AutoencoderKLLTXVideo",
           _ltx_diffusers_config("DIFFUSERS_VAE_CONFIG"),
           "DIFFUSERS_VAE_CONFIG in the official ltx_video/utils/diffusers_config_mapping.py "
           "(= Lightricks/LTX-Video vae/config.json)",
           "convert_ltx_vae_checkpoint_to_diffusers",
           "a VAE whose flat official block lists are regrouped: up_blocks.2 -> up_blocks.1.upsamplers.0, "
           "down_blocks.2 -> down_blocks.0.conv_out, res_blocks -> resnets; the vae. prefix",
           full_shapes=True),
    Family("ltx_vae_091", "Lightricks/LTX-Video", official_ltx_vae_091, "diffusers.AutoencoderKLLTXVideo",
           lambda root: dict(LTX_VAE_091_DIFFUSERS),
           "get_vae_config('0.9.1') of diffusers' scripts/convert_ltx_to_diffusers.py (= diffusers/LTX-Video-0.9.1 "
           "vae/config.json)",
           "convert_ltx_vae_checkpoint_to_diffusers",
           "the v0.9.1 VAE: the decoder's flat block list regrouped another way than v0.9's (up_blocks.1 -> "
           "up_blocks.0.upsamplers.0), last_time_embedder/last_scale_shift_table renamed, per-channel latent "
           "statistics kept (two of four) under new names",
           full_shapes=True),
    Family("mochi", "genmoai/mochi", official_mochi, "diffusers.MochiTransformer3DModel",
           lambda root: dict(patch_size=2, num_attention_heads=24, attention_head_dim=128, num_layers=48,
                             pooled_projection_dim=1536, in_channels=12, out_channels=None, qk_norm="rms_norm",
                             text_embed_dim=4096, time_embed_dim=256, activation_fn="swiglu",
                             max_sequence_length=256),
           "genmo/mochi-1-preview transformer/config.json",
           "convert_mochi_transformer_checkpoint_to_diffusers",
           "fused qkv_x/qkv_y -> to_q/to_k/to_v and add_*_proj; SwiGLU w1 proj/gate halves swapped; final "
           "modulation shift/scale swapped; last block's context branch renamed (linear_1)"),
    Family("hunyuan_video", "Tencent/HunyuanVideo", official_hunyuan_video,
           "diffusers.HunyuanVideoTransformer3DModel",
           lambda root: dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128,
                             num_layers=20, num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2,
                             patch_size_t=1, qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096,
                             pooled_projection_dim=768, rope_theta=256.0, rope_axes_dim=(16, 56, 56)),
           "hunyuanvideo-community/HunyuanVideo transformer/config.json",
           "convert_hunyuan_video_transformer_to_diffusers",
           "img_attn_qkv/txt_attn_qkv and the token refiner's self_attn_qkv split three ways; single-block linear1 "
           "-> to_q, to_k, to_v, proj_mlp; final adaLN halves swapped"),
    Family("sd35", "Stability-AI/sd3.5", official_sd35, "diffusers.SD3Transformer2DModel",
           lambda root: dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                             num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                             pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                             dual_attention_layers=tuple(range(13)), qk_norm="rms_norm"),
           "stabilityai/stable-diffusion-3.5-medium transformer/config.json",
           "convert_sd3_transformer_checkpoint_to_diffusers",
           "model.diffusion_model. prefix; fused qkv (and MMDiT-X attn2 qkv) split; adaLN halves swapped in "
           "norm_out and in the last block's context norm"),
    Family("lumina2", "Alpha-VLLM/Lumina-Image-2.0", official_lumina2, "diffusers.Lumina2Transformer2DModel",
           lambda root: dict(sample_size=128, patch_size=2, in_channels=16, hidden_size=2304, num_layers=26,
                             num_refiner_layers=2, num_attention_heads=24, num_kv_heads=8, multiple_of=256,
                             ffn_dim_multiplier=None, norm_eps=1e-5, scaling_factor=1.0, axes_dim_rope=(32, 32, 32),
                             axes_lens=(300, 512, 512), cap_feat_dim=2304),
           "Alpha-VLLM/Lumina-Image-2.0 transformer/config.json",
           "convert_lumina2_to_diffusers",
           "grouped-query fused qkv split into unequal parts (2304, 768, 768); an official norm the converter "
           "drops; final_layer split across norm_out.linear_1/linear_2"),
]


# ----------------------------------------------------------------------------------------------
# the Diffusers side
# ----------------------------------------------------------------------------------------------
def diffusers_shapes(class_path: str, config: dict) -> dict[str, tuple[int, ...]]:
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    with torch.device("meta"):
        model = cls.from_config(config)
    return shapes_of(model)


# ----------------------------------------------------------------------------------------------
# tracing the converter
# ----------------------------------------------------------------------------------------------
def provenance_checkpoint(shapes: dict[str, tuple[int, ...]], *, full: bool = False) -> dict[str, torch.Tensor]:
    """One float64 tensor per official key: row j of key i holds (i + 1) * BASE + j.

    Only the first dim has its real size; the others are 1 (so the fake checkpoint of a 12B model is a few MB).
    That is enough for converters that cut, concatenate and permute along dim 0 only, which every converter
    traced here does; ``trace`` checks that the trailing dims came through as they went in. ``full``: the real
    shapes, as zero-stride views of the row codes (for a converter that reads a trailing dim and only renames)."""
    out = {}
    for i, (key, shape) in enumerate(shapes.items()):
        rows = shape[0] if shape else 1
        codes = torch.arange(rows, dtype=torch.float64) + (i + 1) * BASE
        if not shape:
            out[key] = codes.reshape(())
            continue
        col = codes.reshape((rows,) + (1,) * (len(shape) - 1))
        out[key] = col.expand(shape) if full else col
    return out


def _runs(codes: list[tuple[int, int]], keys: list[str]) -> list[list]:
    """(source index, row) per target row -> [[source key, start, stop], ...] in target row order."""
    pieces: list[list] = []
    for i, j in codes:
        if pieces and pieces[-1][0] == keys[i] and pieces[-1][2] == j:
            pieces[-1][2] = j + 1
        else:
            pieces.append([keys[i], j, j + 1])
    return pieces


def trace(converter: Callable, official: dict[str, tuple[int, ...]], target: dict[str, tuple[int, ...]], *,
          full: bool = False, keys_remembered: bool = False) -> dict:
    """Run ``converter`` on a provenance checkpoint and tell, per target key, which source rows it holds."""
    keys = list(official)
    checkpoint = provenance_checkpoint(official, full=full)
    converted = converter(_KeysRemembered(checkpoint) if keys_remembered else checkpoint)
    problems = []
    extra = [k for k in converted if k not in target]
    unfilled = [k for k in target if k not in converted]
    if extra:
        problems.append(f"converter outputs not in the Diffusers class: {extra[:5]}")
    targets: dict[str, dict] = {}
    used: dict[str, list[str]] = {}
    for tkey, tshape in target.items():
        if tkey not in converted:
            continue
        t = converted[tkey]
        rows = t.reshape(-1) if t.dim() <= 1 else t[(slice(None),) + (0,) * (t.dim() - 1)]
        if any(d != 1 for d in t.shape[1:]) and not (full and tuple(t.shape) == tuple(tshape)):
            problems.append(f"{tkey}: the converter changed a trailing dim ({list(t.shape)})")
        values = rows.tolist()
        codes = [(int(v) // BASE - 1, int(v) % BASE) for v in values]
        if any(v != int(v) or not 0 <= i < len(keys) for v, (i, _) in zip(values, codes)):
            problems.append(f"{tkey}: values that are no provenance code (the converter computed on them)")
            continue
        pieces = _runs(codes, keys)
        sources = list(dict.fromkeys(p[0] for p in pieces))
        for s in sources:
            used.setdefault(s, []).append(tkey)
        entry: dict = {"pieces": pieces}
        whole = [official[s][0] if official[s] else 1 for s in sources]
        n_rows = tshape[0] if tshape else 1
        if len(values) != n_rows:
            problems.append(f"{tkey}: {len(values)} rows traced, the Diffusers class has {list(tshape)}")
        in_order = all(p[1] == 0 and p[2] == w for p, w in zip(pieces, whole)) and len(pieces) == len(sources)
        if len(sources) > 1:
            entry["kind"] = "merge" if in_order else "merge+reorder"
        elif in_order:
            entry["kind"] = "rename"
        elif sum(p[2] - p[1] for p in pieces) == whole[0]:
            entry["kind"] = "reorder"
        else:
            entry["kind"] = "split" if len(pieces) == 1 else "split+reorder"
        trailing = [tuple(official[s][1:]) for s in sources]
        if any(tr != tuple(tshape[1:]) for tr in trailing) or (len(official[sources[0]]) == 0) != (len(tshape) == 0):
            entry["reshape"] = {"from": [list(official[s]) for s in sources], "to": list(tshape)}
        targets[tkey] = entry
    for ts in used.values():
        if len(ts) > 1 and all(targets[t]["kind"] == "rename" for t in ts):
            for t in ts:
                targets[t]["kind"] = "tie"
    splits = []
    for s, ts in used.items():
        parts = [t for t in ts if targets[t]["kind"].startswith("split")]
        if parts:
            parts.sort(key=lambda t: next(p[1] for p in targets[t]["pieces"] if p[0] == s))
            splits.append({"source": s, "targets": parts, "sizes": [target[t][0] for t in parts], "dim": 0})
    reorders = [{"source": e["pieces"][0][0], "target": t, "blocks": [p[1:] for p in e["pieces"]]}
                for t, e in targets.items() if "reorder" in e["kind"]]
    merges = [{"target": t, "sources": [p[0] for p in e["pieces"]], "dim": 0}
              for t, e in targets.items() if e["kind"].startswith("merge")]
    if problems:
        raise RuntimeError("tracing failed:\n  " + "\n  ".join(problems))
    return {"targets": targets, "unfilled": unfilled, "dropped": [k for k in keys if k not in used],
            "splits": splits, "merges": merges, "reorders": reorders}


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------
def write_listing(path: Path, title: str, shapes: dict[str, tuple[int, ...]]) -> None:
    params = sum(math.prod(s) for s in shapes.values())
    lines = [f"# {title}: {len(shapes)} tensors, {params} params"]
    lines += [f"{k}\t{list(s)}" for k, s in shapes.items()]
    path.write_text("\n".join(lines) + "\n")


def dump_truth(truth: dict) -> str:
    """JSON with one line per entry of each list or mapping (diffable, a third the size of indent=1)."""
    lines = ["{"]
    items = list(truth.items())
    for n, (key, value) in enumerate(items):
        comma = "," if n < len(items) - 1 else ""
        if isinstance(value, dict) and value:
            inner = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()]
            lines += [f" {json.dumps(key)}: {{", ",\n".join(inner), f" }}{comma}"]
        elif isinstance(value, list) and value:
            lines += [f" {json.dumps(key)}: [", ",\n".join(f"  {json.dumps(v)}" for v in value), f" ]{comma}"]
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}{comma}")
    return "\n".join(lines + ["}"]) + "\n"


def build(fam: Family, checkout: Checkout) -> None:
    import diffusers
    from diffusers.loaders import single_file_utils

    official, how = fam.official(checkout.root)
    config = fam.diffusers_config(checkout.root)
    target = diffusers_shapes(fam.diffusers_class, config)
    truth = trace(getattr(single_file_utils, fam.converter), official, target, full=fam.full_shapes,
                  keys_remembered=fam.keys_remembered)
    out = DATA / fam.name
    out.mkdir(parents=True, exist_ok=True)
    write_listing(out / "official_keys.txt", f"official {fam.repo}@{checkout.commit[:12]}", official)
    write_listing(out / "diffusers_keys.txt", f"diffusers {fam.diffusers_class.rsplit('.', 1)[-1]} "
                  f"({fam.config_source})", target)
    truth = {"family": fam.name, "source": "official_keys.txt", "target": "diffusers_keys.txt",
             "converter": f"diffusers.loaders.single_file_utils.{fam.converter}",
             "diffusers_version": diffusers.__version__, **truth}
    (out / "truth.json").write_text(dump_truth(truth))
    kinds: dict[str, int] = {}
    for e in truth["targets"].values():
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    layout = ("every dim at its real size, as zero-stride views of the row codes: the converter reads a trailing dim "
              "and only renames" if fam.full_shapes else "first dim at its real size, the other dims 1: the "
              "converter cuts, concatenates and permutes along dim 0 only, which the tracer checks")
    (out / "SOURCE.md").write_text(f"""# {fam.name}

Exercises: {fam.modes}.

- **official_keys.txt** ({len(official)} tensors): official repository `github.com/{fam.repo}` at commit
  `{checkout.commit}`; {how}. Built on the meta device; no official code is kept here.
- **diffusers_keys.txt** ({len(target)} tensors): `{fam.diffusers_class}.from_config(config)` on the meta device,
  diffusers {diffusers.__version__}, config = the released one ({fam.config_source}):
  `{json.dumps(config)}`.
- **truth.json**: `diffusers.loaders.single_file_utils.{fam.converter}` (diffusers {diffusers.__version__}) run on a
  fake official state dict in which row j of the i-th official key holds the float64 value (i + 1) * 2**24 + j
  ({layout}). Decoding every output row gives, per Diffusers key, its `pieces`
  (`[official key, first row, end row]` in output row order) and its `kind`
  ({", ".join(f"{k}: {n}" for k, n in sorted(kinds.items()))}); `splits` list each fused official tensor's
  parts in row order with their sizes, `reorders` each tensor whose rows are permuted (`blocks`: official row
  ranges in output order), `dropped` official keys the converter discards, `unfilled` Diffusers keys it does not
  produce.

Rebuild: `python benchmarks/diffkeys_families/build_families.py --repo {fam.name}=CHECKOUT --only {fam.name}`
(CHECKOUT: a work tree or bare git dir of `{fam.repo}` at the commit above).
""")
    print(f"{fam.name}: {len(official)} official, {len(target)} diffusers, {len(truth['splits'])} splits, "
          f"{len(truth['reorders'])} reorders, {len(truth['dropped'])} dropped, {len(truth['unfilled'])} unfilled, "
          f"kinds {kinds}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", action="append", default=[], metavar="FAMILY=PATH",
                    help="a checkout (work tree or bare git dir) of the family's official repository")
    ap.add_argument("--only", action="append", default=[], metavar="FAMILY")
    args = ap.parse_args(argv)
    repos = dict(r.split("=", 1) for r in args.repo)
    known = {f.name for f in FAMILIES}
    if unknown := (set(repos) | set(args.only)) - known:
        ap.error(f"unknown families {sorted(unknown)}; known: {sorted(known)}")
    with tempfile.TemporaryDirectory() as tmp:
        for fam in FAMILIES:
            if (args.only and fam.name not in args.only) or fam.name not in repos:
                continue
            build(fam, open_checkout(Path(repos[fam.name]).resolve(), Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
