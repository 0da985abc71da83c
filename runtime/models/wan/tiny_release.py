"""Write the embedded tiny Wan2.1 T2V release in the *official* layout (deterministic).

    python -m vidport.runtime.models.wan.tiny_release official_weights/wan2.1-t2v-tiny

Key names come from the published key listings of the real release (``reference/official_*_keys.txt``):
every real key is kept (blocks beyond the tiny layer count dropped) and each real dimension is
replaced by its tiny counterpart, so the tiny release has exactly the real naming and structure.
Weights are seeded random numbers scaled like a trained model's (fan-in weights, unit norms).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from vidport.runtime.models.wan import family

# real dimension -> tiny dimension, per component (dimensions not listed stay as they are)
DIT_DIMS = {1536: 64, 8960: 128, 9216: 384, 4096: 32, 256: 32}
VAE_DIMS = {96: 8, 192: 16, 384: 32, 1152: 96, 768: 64}
T5_DIMS = {256384: 256, 4096: 32, 10240: 64, 64: 4}
T5_LAYERS = 2
TOKENIZER_CORPUS = (
    "a cat walks on the grass in the sun. a dog runs along the beach at sunset. "
    "two people dance in the rain under a red umbrella. a car drives through a city at night. "
    "the camera pans over snowy mountains. a bird flies above the ocean waves. "
    "close up of a flower opening in spring. an astronaut rides a horse on the moon. "
    "bright colors, overexposed, static, blurry details, subtitles, worst quality, low quality. "
)


def read_listing(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, shape = line.split("\t")
            out.append((name, tuple(json.loads(shape))))
    return out


def shrink(listing, dims: dict[int, int], max_layers: int, layer_prefix: str):
    rx = re.compile(rf"^{re.escape(layer_prefix)}\.(\d+)\.")
    out = []
    for name, shape in listing:
        m = rx.match(name)
        if m and int(m.group(1)) >= max_layers:
            continue
        out.append((name, tuple(dims.get(d, d) for d in shape)))
    return out


def init_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random values scaled like trained weights, so activations stay in a sane range."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "gamma" or (leaf == "weight" and len(shape) == 1):  # norm scales
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if leaf == "bias":
        return 0.02 * torch.randn(shape, generator=gen)
    if "modulation" in name:
        return torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
    if "token_embedding" in name:
        return torch.randn(shape, generator=gen)
    if "pos_embedding" in name:
        return 0.5 * torch.randn(shape, generator=gen)
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return torch.randn(shape, generator=gen) / math.sqrt(fan_in)


def make_tensors(listing, seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: init_tensor(name, shape, gen).to(dtype) for name, shape in listing}


def make_tokenizer(folder: Path, vocab_size: int) -> None:
    """A small SentencePiece-style Unigram tokenizer (the umT5 tokenizer's kind), built directly from word
    and character counts of a fixed corpus so that it is reproducible to the byte (the library's trainer
    breaks ties differently from run to run)."""
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    words = Counter("\u2581" + w for w in TOKENIZER_CORPUS.lower().split())
    chars = Counter(c for w in words.elements() for c in w)
    counts = {**chars, **dict(words.most_common(vocab_size - 3 - len(chars)))}
    total = sum(counts.values())
    pieces = sorted(((p, round(math.log(n / total), 9)) for p, n in counts.items()), key=lambda ps: (-ps[1], ps[0]))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + pieces
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5TokenizerFast", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
        "model_max_length": 512, "extra_ids": 0, "additional_special_tokens": [],
    }, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2) + "\n")


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
