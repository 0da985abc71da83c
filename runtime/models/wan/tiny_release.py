"""Write the embedded tiny Wan2.1 T2V release in the *official* layout (deterministic).

    python -m vidport.runtime.models.wan.tiny_release official_weights/wan2.1-t2v-tiny

Key names come from the published key listings of the real release (``reference/official_*_keys.txt``):
every real key is kept (blocks beyond the tiny layer count dropped) and each real dimension is
replaced by its tiny counterpart, so the tiny release has exactly the real naming and structure.
Weights are seeded random numbers scaled like a trained model's (fan-in weights, unit norms).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from vidport.runtime.models.tiny_weights import (  # noqa: F401 - re-exported
    TOKENIZER_CORPUS,
    init_tensor,
    make_tensors,
    make_tokenizer,
    read_listing,
    shrink,
)
from vidport.runtime.models.wan import family

# real dimension -> tiny dimension, per component (dimensions not listed stay as they are)
DIT_DIMS = {1536: 64, 8960: 128, 9216: 384, 4096: 32, 256: 32}
VAE_DIMS = {96: 8, 192: 16, 384: 32, 1152: 96, 768: 64}
T5_DIMS = {256384: 256, 4096: 32, 10240: 64, 64: 4}
T5_LAYERS = 2


def make_tiny_release(out: Path, seed: int = 0, *, real_size: bool = False) -> None:
    """The tiny release; with ``real_size`` a random-weight release at the real 1.3B sizes (about 17 GB, for
    exercising conversion and real-size parity on a GPU machine without downloading the release)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ref = family.REFERENCE_KEYS
    cfg = family.dit_config("1.3b" if real_size else "tiny")
    sizes = {} if real_size else {"dit": DIT_DIMS, "vae": VAE_DIMS, "t5": T5_DIMS}
    layers = {"dit": cfg.num_layers, "t5": 24 if real_size else T5_LAYERS}

    dit = shrink(read_listing(ref / "official_dit_1.3b_keys.txt"), sizes.get("dit", {}), layers["dit"], "blocks")
    save_file(make_tensors(dit, seed), str(out / family.OFFICIAL_FILES["transformer"]))
    (out / "config.json").write_text(json.dumps(cfg.to_official(), indent=4) + "\n")

    vae = shrink(read_listing(ref / "official_vae_keys.txt"), sizes.get("vae", {}), 10**6, "none")
    torch.save(make_tensors(vae, seed + 1), out / family.OFFICIAL_FILES["vae"])

    t5 = shrink(read_listing(ref / "official_umt5xxl_keys.txt"), sizes.get("t5", {}), layers["t5"], "blocks")
    torch.save(make_tensors(t5, seed + 2, torch.bfloat16), out / family.OFFICIAL_FILES["text_encoder"])

    make_tokenizer(out / family.OFFICIAL_FILES["tokenizer"], family.text_encoder_config("tiny")["vocab_size"])
    if real_size:
        return
    (out / "README.md").write_text(
        "# wan2.1-t2v-tiny\n\nA tiny Wan2.1 T2V release in the official layout (seeded random weights), written by\n"
        "`python -m vidport.runtime.models.wan.tiny_release official_weights/wan2.1-t2v-tiny`. Key names are those of\n"
        "Wan-AI/Wan2.1-T2V-1.3B with tiny dimensions. It exercises the tools; it does not make real videos.\n")


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m vidport.runtime.models.wan.tiny_release",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("target", nargs="?", type=Path, default=Path("official_weights/wan2.1-t2v-tiny"),
                    help="folder to write the release into (default: %(default)s)")
    ap.add_argument("--real-size", action="store_true",
                    help="random weights at the real 1.3B sizes instead (about 17.5 GB), to exercise conversion "
                         "and real-size parity without downloading the release")
    args = ap.parse_args(argv)
    make_tiny_release(args.target, real_size=args.real_size)


if __name__ == "__main__":
    main()
