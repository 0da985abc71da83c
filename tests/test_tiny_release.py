"""The embedded tiny release: official key names (checked against the published listings of the real
release) and bit-for-bit reproducible from its generator script."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from vidport.porting.sources import open_source
from vidport.runtime.models.wan import family
from vidport.runtime.models.wan.tiny_release import make_tiny_release, read_listing

RELEASE = Path(__file__).resolve().parents[1] / "official_weights" / "wan2.1-t2v-tiny"
LISTINGS = {
    "transformer": ("official_dit_1.3b_keys.txt", r"^blocks\.(\d+)\."),
    "vae": ("official_vae_keys.txt", None),
    "text_encoder": ("official_umt5xxl_keys.txt", r"^blocks\.(\d+)\."),
}


@pytest.mark.parametrize("component", list(LISTINGS))
def test_key_names_are_the_real_release_names(component):
    listing, layer_rx = LISTINGS[component]
    real = read_listing(family.REFERENCE_KEYS / listing)
    tiny = open_source(str(RELEASE), component)
    layers = {int(m.group(1)) for k in tiny.keys() if layer_rx and (m := re.match(layer_rx, k))}
    expected = [name for name, _ in real
                if not (layer_rx and (m := re.match(layer_rx, name)) and int(m.group(1)) not in layers)]
    assert tiny.keys() == expected or sorted(tiny.keys()) == sorted(expected)
    # same rank for every tensor; tiny dimensions only where the real ones are large
    real_shapes = dict(real)
    for name, info in tiny.infos.items():
        assert len(info.shape) == len(real_shapes[name]), name
        assert all(t <= r for t, r in zip(info.shape, real_shapes[name])), (name, info.shape)


def test_dit_config_is_the_official_format():
    cfg = json.loads((RELEASE / "config.json").read_text())
    assert cfg["_class_name"] == "WanModel" and cfg["model_type"] == "t2v"
    assert family.read_official_config(RELEASE) == family.dit_config("tiny")


def test_generator_rewrites_the_release_bit_for_bit(tmp_path):
    make_tiny_release(tmp_path)
    for path in sorted(p for p in RELEASE.rglob("*") if p.is_file()):
        rel = path.relative_to(RELEASE)
        assert (tmp_path / rel).read_bytes() == path.read_bytes(), f"{rel} differs from a fresh generation"


def test_text_encoder_is_bf16_like_the_official_file():
    sd = torch.load(RELEASE / family.OFFICIAL_FILES["text_encoder"], weights_only=True)
    assert {t.dtype for t in sd.values()} == {torch.bfloat16}
