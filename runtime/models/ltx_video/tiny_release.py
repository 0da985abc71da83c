"""Write the embedded tiny LTX-Video release in the *official* layout (deterministic).

    python -m vidport.runtime.models.ltx_video.tiny_release official_weights/ltx-video-tiny

Layout as the real release (Lightricks/LTX-Video v0.9.1): ``ltx-video-tiny.safetensors`` holds the transformer
under ``model.diffusion_model.`` and the VAE under ``vae.``, with the official configs in its metadata (``config``,
as the official ``Transformer3DModel`` / ``CausalVideoAutoencoder`` / ``RectifiedFlowScheduler`` read them); the T5
text encoder (``text_encoder/``, saved as transformers saves it: tied embedding once) and its tokenizer
(``tokenizer/``) sit beside it in the Diffusers layout. Key names and shapes are those of the official classes at
the tiny config (``reference/official_*_tiny_keys.txt``, a subset of the real release's names); weights are seeded
random numbers scaled like a trained model's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from vidport.runtime.models.ltx_video import family
from vidport.runtime.models.tiny_weights import make_tensors, make_tokenizer, read_listing

CHECKPOINT = "ltx-video-tiny.safetensors"
README = """# ltx-video-tiny

A tiny LTX-Video (v0.9.1 layout) release in the official single-file layout (seeded random weights), written by
`python -m vidport.runtime.models.ltx_video.tiny_release official_weights/ltx-video-tiny`. Key names are those of
the official Transformer3DModel and CausalVideoAutoencoder at tiny sizes, under the prefixes of
ltx-video-2b-v0.9.1.safetensors, whose metadata config it carries; text_encoder/ and tokenizer/ are in the
Diffusers layout as in Lightricks/LTX-Video. It exercises the tools; it does not make real videos.
"""


def vae_tensors(seed: int) -> dict[str, torch.Tensor]:
    """The VAE's tensors; the per-channel latent statistics and the timestep multiplier get their meaning's values
    (a channel index, positive standard deviations, the official 1000)."""
    listing = read_listing(family.REFERENCE_KEYS / "official_vae_tiny_keys.txt")
    special = {name for name, shape in listing if "per_channel_statistics" in name or not shape}
    out = make_tensors([(n, s) for n, s in listing if n not in special], seed)
    gen = torch.Generator().manual_seed(seed + 100)
    for name, shape in listing:
        if name not in special:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if not shape:  # decoder.timestep_scale_multiplier
            value = torch.tensor(1000.0)
        elif leaf == "channel":
            value = torch.arange(shape[0], dtype=torch.float32)
        elif leaf.startswith("std") or leaf.endswith("stds"):
            value = 0.5 + torch.rand(shape, generator=gen)
        else:
            value = 0.2 * torch.randn(shape, generator=gen)
        out[name] = value
    return {n: out[n] for n, _ in listing}  # the listing's order


def text_encoder_files(folder: Path, seed: int) -> None:
    from safetensors.torch import save_file

    listing = read_listing(family.REFERENCE_KEYS / "t5_v1_1_xxl_keys.txt")
    cfg = family.text_encoder_config("tiny")
    # the tiny T5's names and shapes: the transformers class at the tiny config, tied copies saved once
    from transformers import T5Config, T5EncoderModel

    with torch.device("meta"):
        t5 = T5EncoderModel(T5Config(**cfg))
    tied = set(getattr(t5, "_tied_weights_keys", None) or {})
    tiny = [(k, tuple(v.shape)) for k, v in t5.state_dict().items() if k not in tied]
    real_names = {n for n, _ in listing}
    assert all(n in real_names for n, _ in tiny), "tiny T5 names must be the real text encoder's"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(make_tensors(tiny, seed), str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {"architectures": ["T5EncoderModel"], "model_type": "t5", "dtype": "float32", **cfg}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def make_tiny_release(out: Path, seed: int = 0) -> None:
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dit = make_tensors(read_listing(family.REFERENCE_KEYS / "official_transformer_tiny_keys.txt"), seed)
    tensors = {**dit, **vae_tensors(seed + 1)}
    config = json.dumps(family.official_configs("tiny"), sort_keys=True)
    save_file(tensors, str(out / CHECKPOINT), metadata={"config": config})  # one key: a stable header
    text_encoder_files(out / family.TEXT_ENCODER_DIR, seed + 2)
    make_tokenizer(out / family.TOKENIZER_DIR, family.text_encoder_config("tiny")["vocab_size"],
                   model_max_length=family.TEXT_LEN)
    (out / "README.md").write_text(README)


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m vidport.runtime.models.ltx_video.tiny_release",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("target", nargs="?", type=Path, default=Path("official_weights/ltx-video-tiny"),
                    help="folder to write the release into (default: %(default)s)")
    args = ap.parse_args(argv)
    make_tiny_release(args.target)


if __name__ == "__main__":
    main()
