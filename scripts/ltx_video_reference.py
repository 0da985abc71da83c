"""Write the LTX-Video family's reference key listings from a checkout of the official repository.

    python scripts/ltx_video_reference.py /work/.mirror/Lightricks+LTX-Video/repo

For each preset of ``runtime/models/ltx_video/reference/official_configs.json`` (the configs the official single
file carries in its metadata) it builds the official ``Transformer3DModel`` and ``CausalVideoAutoencoder`` on the
meta device with the official code (imported from the checkout, never copied here) and writes their keys as the
single file stores them (``model.diffusion_model.`` and ``vae.`` prefixes, plus the file's four
``vae.per_channel_statistics.*`` vectors), and the Diffusers VAE's keys at the config the family derives
(``official_vae_<preset>_keys.txt``, ``diffusers_vae_<preset>_keys.txt``, ``official_transformer_<preset>_keys.txt``).
The transformers T5 v1.1 XXL encoder's keys as its saved file holds them (the release ships it in the
Diffusers layout; the tied ``encoder.embed_tokens.weight`` is stored once, as ``shared.weight``) go to
``t5_v1_1_xxl_keys.txt``. CHECKOUT is a work tree or a bare git dir (as for the diff-keys benchmark builder).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "runtime" / "models" / "ltx_video" / "reference"
sys.path.insert(0, str(ROOT / "benchmarks" / "diffkeys_families"))

from build_families import importable, open_checkout, shapes_of, write_listing  # noqa: E402

STATISTICS = ("channel", "mean-of-means", "std-of-means", "mean-of-stds")


def official_listings(root: Path, cfg: dict) -> tuple[dict, dict]:
    with importable(root):
        from ltx_video.models.autoencoders.causal_video_autoencoder import CausalVideoAutoencoder
        from ltx_video.models.transformers.transformer3d import Transformer3DModel

        with torch.device("meta"):
            dit = Transformer3DModel.from_config(json.loads(json.dumps(cfg["transformer"])))
            vae = CausalVideoAutoencoder.from_config(json.loads(json.dumps(cfg["vae"])))
        dit_shapes = shapes_of(dit, "model.diffusion_model.")
        vae_shapes = shapes_of(vae, "vae.")
    latent = cfg["vae"]["latent_channels"]
    vae_shapes.update({f"vae.per_channel_statistics.{s}": (latent,) for s in STATISTICS})
    return dit_shapes, vae_shapes


def main(argv: list[str] | None = None) -> int:
    from diffusers import AutoencoderKLLTXVideo
    from transformers import T5Config, T5EncoderModel
    from vidport.runtime.models.ltx_video import family

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkout", type=Path, help="Lightricks/LTX-Video work tree or bare git dir")
    args = ap.parse_args(argv)
    configs = json.loads((REFERENCE / "official_configs.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        co = open_checkout(args.checkout.resolve(), Path(tmp))
        title = f"official Lightricks/LTX-Video@{co.commit[:12]}"
        for preset, cfg in configs.items():
            if preset.startswith("_"):
                continue
            dit, vae = official_listings(co.root, cfg)
            write_listing(REFERENCE / f"official_transformer_{preset}_keys.txt", f"{title} Transformer3DModel", dit)
            write_listing(REFERENCE / f"official_vae_{preset}_keys.txt", f"{title} CausalVideoAutoencoder", vae)
            with torch.device("meta"):
                target = AutoencoderKLLTXVideo.from_config(family.vae_config_from_official(cfg["vae"]))
            write_listing(REFERENCE / f"diffusers_vae_{preset}_keys.txt",
                          "diffusers AutoencoderKLLTXVideo at family.vae_config_from_official", shapes_of(target))
            print(f"{preset}: {len(dit)} transformer, {len(vae)} VAE keys")
    with torch.device("meta"):
        t5 = T5EncoderModel(T5Config(**family.text_encoder_config("2b")))
    tied = set(getattr(t5, "_tied_weights_keys", None) or {})  # saved once, under the tensor they are tied to
    write_listing(REFERENCE / "t5_v1_1_xxl_keys.txt", "text_encoder/ of the release: transformers T5EncoderModel "
                  "(google/t5-v1_1-xxl) as save_pretrained stores it (tied copies once)",
                  {k: v for k, v in shapes_of(t5).items() if k not in tied})
    return 0


if __name__ == "__main__":
    sys.exit(main())
