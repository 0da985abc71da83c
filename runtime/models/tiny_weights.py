"""Seeded random weights and a reproducible tokenizer for the embedded tiny releases of every family.

A family's ``tiny_release.py`` reads the key listings of its real release (``read_listing``), keeps or shrinks
them, and fills them with ``make_tensors``: values scaled like a trained model's (fan-in weights, unit norms), so
activations stay in a sane range. ``make_tokenizer`` writes a small T5-style Unigram tokenizer, byte-reproducible.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

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


def make_tokenizer(folder: Path, vocab_size: int, model_max_length: int = 512) -> None:
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
        "model_max_length": model_max_length, "extra_ids": 0, "additional_special_tokens": [],
    }, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2) + "\n")
