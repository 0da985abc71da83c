"""The LTX-Video official release as `port convert` reads it, and the Diffusers layout it becomes (``LTXPipeline``).

The release (Lightricks/LTX-Video): one single-file checkpoint (``ltx-video-2b-v0.9.1.safetensors``) holding the
transformer under ``model.diffusion_model.`` and the VAE under ``vae.``, its config in the safetensors metadata
(``config``: the official classes' ``transformer``, ``vae`` and ``scheduler`` configs), plus ``text_encoder/`` (T5
v1.1 XXL) and ``tokenizer/`` in the Diffusers layout beside it. RELEASE is that folder, or the checkpoint file itself
when the folder holds several versions. The two prefixed components are read from the one file through
``FILE#PREFIX`` sources (``porting.sources.PrefixedSource``), a general feature of the release reader.

What the generic planner asks of a release format is in ``porting.release``.
"""

from __future__ import annotations

import json
from pathlib import Path

from vidport.porting.release import ReleaseContents, library_targets, tokenizer_class
from vidport.runtime.models.ltx_video import family as fam

from vidport.errors import ConvertError, UserError

COMPONENTS = fam.COMPONENTS
WEIGHT_STEMS = {"transformer": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
CONFIG_DTYPE_COMPONENT = "text_encoder"  # the T5 config file records its dtype; the others do not


def read(release: Path) -> ReleaseContents:
    """The release's sources, after checking that every part is there (all missing ones named at once)."""
    from vidport.porting.sources import PrefixedSource
    from vidport.porting.streaming import open_streaming

    root = fam.release_root(release)
    try:
        ckpt = fam.official_checkpoint(release)
    except UserError as e:
        raise ConvertError(str(e)) from None
    te_dir, tok_dir = root / fam.TEXT_ENCODER_DIR, root / fam.TOKENIZER_DIR
    te_weights = _text_encoder_weights(te_dir)
    missing = []
    if te_weights is None:
        missing.append(f"{fam.TEXT_ENCODER_DIR}/ (model.safetensors or its index)")
    if not (te_dir / "config.json").is_file():
        missing.append(f"{fam.TEXT_ENCODER_DIR}/config.json")
    if not tok_dir.is_dir() or not any(p.is_file() for p in tok_dir.iterdir()):
        missing.append(f"{fam.TOKENIZER_DIR}/")
    if missing:
        raise ConvertError(f"{root}: not a complete {fam.NAME} release beside {ckpt.name}, missing "
                           f"{', '.join(missing)}")
    whole = open_streaming(ckpt)
    official = official_config(ckpt, whole.shapes())
    sources = {}
    for comp, prefix in fam.PREFIXES.items():
        try:
            sources[comp] = PrefixedSource(open_streaming(ckpt), prefix)
        except UserError as e:
            raise ConvertError(f"{e}") from None
    whole.close()
    sources["text_encoder"] = open_streaming(te_weights)
    dit = dit_config(official, ckpt)
    preset = next((p for p in fam.PRESETS if fam.dit_config(p) == dit), None) or "2b"
    tok_files = sorted(p for p in tok_dir.rglob("*") if p.is_file())
    files = [ckpt] + sources["text_encoder"].files() + [te_dir / "config.json"] + tok_files
    copies = {f"tokenizer/{p.relative_to(tok_dir).as_posix()}": p for p in tok_files}
    t5 = _text_encoder_config(te_dir / "config.json", preset)
    return ReleaseContents(preset, sources, files, copies, tokenizer_class(tok_dir),
                           {"official": official, "dit": dit, "t5": t5, "checkpoint": ckpt})


def _text_encoder_weights(folder: Path) -> Path | None:
    for name in ("model.safetensors.index.json", "model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    return None


def _text_encoder_config(path: Path, preset: str) -> dict:
    """The family's T5 config with the dimensions the release's text_encoder/config.json states."""
    try:
        given = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConvertError(f"{path}: cannot read the text encoder config ({e})") from None
    base = fam.text_encoder_config(preset)
    return {k: given.get(k, v) for k, v in base.items()}


def official_config(ckpt: Path, shapes: dict[str, tuple[int, ...]]) -> dict:
    """The official configs of a single file: from its metadata, else those of the preset whose published key
    listing has exactly the file's shapes (a file saved without metadata)."""
    from vidport.porting.sources import read_safetensors_header

    meta = read_safetensors_header(ckpt).get("__metadata__") or {}
    if "config" in meta:
        try:
            cfg = json.loads(meta["config"])
            if not all(isinstance(cfg.get(k), dict) for k in ("transformer", "vae")):
                raise ValueError("needs 'transformer' and 'vae' objects")
            return cfg
        except (json.JSONDecodeError, ValueError) as e:
            raise ConvertError(f"{ckpt}: the metadata 'config' is not the official config JSON ({e})") from None
    from vidport.porting.sources import KeysFileSource

    for preset in fam.PRESETS:
        listed = {**KeysFileSource(fam.REFERENCE_KEYS / f"official_transformer_{preset}_keys.txt").shapes(),
                  **KeysFileSource(fam.REFERENCE_KEYS / f"official_vae_{preset}_keys.txt").shapes()}
        if listed == shapes:
            return fam.official_configs(preset)
    raise ConvertError(f"{ckpt}: no 'config' in the safetensors metadata and the tensors match no known "
                       f"{fam.NAME} preset ({', '.join(fam.PRESETS)}); re-download the release file")


def dit_config(official: dict, where: Path):
    try:
        return fam.dit_config_from_official(official["transformer"])
    except (UserError, KeyError, TypeError) as e:
        raise ConvertError(f"{where}: official transformer config: {e}") from None


def target_configs(contents: ReleaseContents) -> dict[str, dict]:
    x = contents.extra
    return _target_configs(x["official"], x["dit"], x["t5"], x["checkpoint"])


def _target_configs(official: dict, dit, t5: dict, where) -> dict[str, dict]:
    """The configs of the target models (plain data, no library imported)."""
    try:
        vae = fam.vae_config_from_official(official["vae"])
        scheduler = fam.scheduler_config(official.get("scheduler"))
    except (UserError, KeyError, TypeError) as e:
        raise ConvertError(f"{where}: official config: {e}") from None
    return {"transformer": {k: v for k, v in dit.to_diffusers().items() if not k.startswith("_")},
            "vae": vae, "text_encoder": dict(t5), "scheduler": scheduler}


def known_configs() -> dict[str, dict[str, dict]]:
    """The target configs of the family's known releases: {preset: configs}."""
    return {p: _target_configs(fam.official_configs(p), fam.dit_config(p), fam.text_encoder_config(p), p)
            for p in fam.PRESETS}


def build_targets(cfgs: dict[str, dict]):
    """The Diffusers/transformers models on the meta device -> ({component: (shapes, stem, keep_fp32)},
    component_files(config_dtype) -> {relative path: config text}); ``model_index.json`` is ``model_index``'s."""
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    return library_targets(cfgs, WEIGHT_STEMS, transformer=LTXVideoTransformer3DModel, vae=AutoencoderKLLTXVideo,
                           text_config=T5Config, text_encoder=T5EncoderModel,
                           scheduler=FlowMatchEulerDiscreteScheduler)


def model_index(tokenizer_class: str, diffusers_version: str) -> str:
    """The pipeline index of an LTXPipeline repo (plain data)."""
    return json.dumps({
        "_class_name": "LTXPipeline",
        "_diffusers_version": diffusers_version,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", tokenizer_class],
        "transformer": ["diffusers", "LTXVideoTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLLTXVideo"],
    }, indent=2) + "\n"
