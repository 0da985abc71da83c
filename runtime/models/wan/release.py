"""The Wan2.1 T2V official release as `port convert` reads it, and the Diffusers layout it becomes
(the layout of Wan-AI/Wan2.1-T2V-*-Diffusers, ``WanPipeline``).

What the generic planner (``vidport.porting.convert``) asks of a family's release format:
``read(release)`` -> ``ReleaseContents`` (its sources and files, missing files all named at once),
``target_configs(contents)`` (plain data), ``build_targets(cfgs)`` (the Diffusers/transformers models on
the meta device), ``model_index(...)`` and ``known_configs()`` (the published configs, for the shipped
layouts)."""

from __future__ import annotations

import json
from pathlib import Path

from vidport.porting.release import ReleaseContents, library_targets, tokenizer_class
from vidport.runtime.models.wan import family as fam

from vidport.errors import ConvertError

COMPONENTS = fam.COMPONENTS
WEIGHT_STEMS = {"transformer": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
CONFIG_DTYPE_COMPONENT = "text_encoder"  # the umT5 config file records its dtype; the others do not


def read(release: Path) -> ReleaseContents:
    """The release's sources, after checking that every file is there (all missing ones named at once)."""
    from vidport.porting.streaming import open_streaming

    tok_dir = release / fam.OFFICIAL_FILES["tokenizer"]
    missing = [n for n in ("config.json", fam.OFFICIAL_FILES["vae"], fam.OFFICIAL_FILES["text_encoder"])
               if not (release / n).is_file()]
    if not any(release.glob("diffusion_pytorch_model*.safetensors*")):
        missing.insert(0, fam.OFFICIAL_FILES["transformer"])
    if not tok_dir.is_dir() or not any(p.is_file() for p in tok_dir.iterdir()):
        missing.append(fam.OFFICIAL_FILES["tokenizer"] + "/")
    if missing:
        raise ConvertError(f"{release}: not a complete {fam.NAME} release, missing {', '.join(missing)}")
    dit = fam.read_official_config(release)
    presets = {p: fam.dit_config(p) for p in fam.PRESETS}
    preset = next((p for p, c in presets.items() if c == dit), None) or next(
        (p for p, c in presets.items() if (c.dim, c.num_layers) == (dit.dim, dit.num_layers)), "1.3b")
    sources = {c: open_streaming(fam.official_component_file(release, c)) for c in COMPONENTS}
    tok_files = sorted(p for p in tok_dir.rglob("*") if p.is_file())
    files = [release / "config.json"] + [f for c in COMPONENTS for f in sources[c].files()] + tok_files
    copies = {f"tokenizer/{p.relative_to(tok_dir).as_posix()}": p for p in tok_files}
    return ReleaseContents(preset, sources, files, copies, tokenizer_class(tok_dir), {"dit": dit})


def target_configs(contents: ReleaseContents) -> dict[str, dict]:
    return _target_configs(contents.extra["dit"], contents.preset, contents.sources)


def _target_configs(dit, preset: str, sources) -> dict[str, dict]:
    """The configs of the target models: the DiT's from the official config.json, the VAE's and umT5's the
    family's with the dimensions read from the tensor shapes. Plain data, no library imported."""
    vae_cfg = dict(fam.vae_config(preset))
    vae_shapes = sources["vae"].shapes() if "vae" in sources else {}
    if "encoder.conv1.weight" in vae_shapes and "conv2.weight" in vae_shapes:
        vae_cfg.update(base_dim=vae_shapes["encoder.conv1.weight"][0], z_dim=vae_shapes["conv2.weight"][0])
    t5_cfg = dict(fam.text_encoder_config(preset))
    t5_shapes = sources["text_encoder"].shapes() if "text_encoder" in sources else {}
    if "token_embedding.weight" in t5_shapes and "blocks.0.pos_embedding.embedding.weight" in t5_shapes:
        vocab, d_model = t5_shapes["token_embedding.weight"]
        buckets, heads = t5_shapes["blocks.0.pos_embedding.embedding.weight"]
        t5_cfg.update(vocab_size=vocab, d_model=d_model, num_heads=heads, relative_attention_num_buckets=buckets,
                      num_layers=len({k.split(".")[1] for k in t5_shapes if k.startswith("blocks.")}),
                      d_kv=t5_shapes["blocks.0.attn.q.weight"][0] // heads,
                      d_ff=t5_shapes["blocks.0.ffn.fc1.weight"][0])
    return {"transformer": {k: v for k, v in dit.to_diffusers().items() if not k.startswith("_")},
            "vae": vae_cfg, "text_encoder": t5_cfg, "scheduler": fam.scheduler_config(preset)}


def known_configs() -> dict[str, dict[str, dict]]:
    """The target configs of the family's known releases: {preset: configs}. The real presets' VAE and
    umT5 dimensions come from the published key listings of the official release, as `port convert`
    derives them from a real release's tensors; the tiny preset's are the family's."""
    from vidport.porting.sources import KeysFileSource

    out = {}
    for preset in fam.PRESETS:
        sources = {} if preset == "tiny" else {
            "vae": KeysFileSource(fam.REFERENCE_KEYS / "official_vae_keys.txt"),
            "text_encoder": KeysFileSource(fam.REFERENCE_KEYS / "official_umt5xxl_keys.txt")}
        out[preset] = _target_configs(fam.dit_config(preset), preset, sources)
    return out


def build_targets(cfgs: dict[str, dict]):
    """The Diffusers/transformers models on the meta device, from ``target_configs`` ->
    ({component: (shapes, stem, keep_fp32)}, component_files(config_dtype) -> {relative path: config text}).
    ``component_files`` writes every config file but ``model_index.json`` (see ``model_index``)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    # AutoencoderKLWan declares no fp32 modules, but diffusers recommends an fp32 VAE (the Diffusers repos ship it so)
    return library_targets(cfgs, WEIGHT_STEMS, transformer=WanTransformer3DModel, vae=AutoencoderKLWan,
                           text_config=UMT5Config, text_encoder=UMT5EncoderModel, scheduler=UniPCMultistepScheduler,
                           vae_keep_fp32=("*",))


def model_index(tokenizer_class: str, diffusers_version: str) -> str:
    """The pipeline index of a WanPipeline repo (plain data: no library needed)."""
    return json.dumps({
        "_class_name": "WanPipeline",
        "_diffusers_version": diffusers_version,
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", tokenizer_class],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }, indent=2) + "\n"
