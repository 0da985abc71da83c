"""The Diffusers layouts vidport ships (runtime/models/wan/layouts.json) against their sources of truth:
the installed diffusers/transformers models, and the key listings of the published Diffusers repos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vidport.porting import layouts
from vidport.porting.provenance import installed_version
from vidport.porting.sources import KeysFileSource
from vidport.porting.streaming import open_streaming
from vidport.runtime.models.wan import family
from vidport.runtime.models.wan import release as wan_release

from vidport.families import get_family

FAM = get_family("wan2.1-t2v")

RELEASE = Path(__file__).resolve().parents[1] / "official_weights" / "wan2.1-t2v-tiny"


@pytest.fixture(scope="module")
def shipped() -> dict:
    data = layouts.load(FAM)
    assert data, f"{layouts.layouts_path(FAM)} is missing or not JSON"
    return data


@pytest.fixture(scope="module")
def rebuilt() -> dict:
    return layouts.build(FAM)  # through the installed diffusers/transformers


def test_shipped_layouts_match_the_libraries(shipped: dict, rebuilt: dict):
    """Every entry rebuilt with the installed libraries: the same configs, shapes, keep-in-fp32 lists and
    config files, up to the writers' version fields and defaulted fields a newer library adds (those load
    the same); byte for byte when the installed versions are the recorded ones."""
    real, harmless = layouts.compare(shipped, rebuilt)
    assert not real, f"{real[:5]}: rewrite with python -m vidport.porting.layouts --write"
    if shipped["generated_with"] == {d: installed_version(d) for d in ("diffusers", "transformers")}:
        assert not harmless
        assert layouts.dumps(rebuilt) == layouts.layouts_path(FAM).read_text()


def test_config_drift_tells_a_new_default_from_a_real_change():
    """A field a newer library adds with its own default value is harmless (the shipped file loads the
    same); a changed value, a non-default new field or a dropped field is real."""
    base = {"_class_name": "AutoencoderKLWan", "_diffusers_version": "0.42.1", "base_dim": 96, "z_dim": 16}
    new_default = {**base, "_diffusers_version": "9.9", "is_residual": False}  # False: the init default
    assert layouts.config_drift(json.dumps(base), json.dumps(new_default)) == \
        ([], ["is_residual=false (loads the same)"])
    real, _ = layouts.config_drift(json.dumps(base), json.dumps({**base, "is_residual": True}))
    assert real == ['is_residual: "<absent>" -> true']
    real, _ = layouts.config_drift(json.dumps(base), json.dumps({**base, "z_dim": 48}))
    assert real == ["z_dim: 16 -> 48"]
    t5 = {"model_type": "umt5", "d_model": 8, "transformers_version": "5.23.0"}
    dropped = {k: v for k, v in t5.items() if k != "d_model"}
    assert layouts.config_drift(json.dumps(t5), json.dumps(dropped))[0] == ['d_model: 8 -> "<absent>"']
    added = {**t5, "tie_word_embeddings": True}  # UMT5Config's default
    assert layouts.config_drift(json.dumps(t5), json.dumps(added))[0] == []
    # transformers 5.24 writes scale_decoder_outputs=false for an untied umT5: only the decoder's LM head
    # reads it, so the encoder loads the same; the same field in a seq2seq model's config is real
    enc = {**t5, "architectures": ["UMT5EncoderModel"], "num_layers": 1, "vocab_size": 16}
    real, ok = layouts.config_drift(json.dumps(enc), json.dumps({**enc, "scale_decoder_outputs": False}))
    assert (real, ok) == ([], ["scale_decoder_outputs=false (read by no class of UMT5EncoderModel)"])
    seq2seq = {**enc, "architectures": ["UMT5ForConditionalGeneration"]}
    real, _ = layouts.config_drift(json.dumps(seq2seq), json.dumps({**seq2seq, "scale_decoder_outputs": False}))
    assert real == ['scale_decoder_outputs: "<absent>" -> false']


@pytest.mark.parametrize("preset, listings", [
    ("1.3b", {"transformer": "diffusers_dit_1.3b_keys.txt", "text_encoder": "transformers_umt5xxl_keys.txt"}),
    ("14b", {"transformer": "diffusers_dit_14b_keys.txt", "text_encoder": "transformers_umt5xxl_keys.txt"}),
])
def test_real_presets_match_the_published_repos(preset: str, listings: dict):
    """The real presets' shipped shapes are exactly the key listings of Wan-AI/Wan2.1-T2V-*-Diffusers
    (transformer) and of the umT5-xxl encoder in transformers' layout."""
    cfgs = layouts.known_configs(FAM)[preset]
    layout = layouts.lookup(FAM, cfgs)
    assert layout is not None
    for comp, name in listings.items():
        published = KeysFileSource(family.REFERENCE_KEYS / name).shapes()
        shapes = layout.targets[comp][0]
        # the published encoder listing has no tied copy of the embedding (transformers keeps it, tied)
        extra = set(shapes) - set(published)
        assert extra <= {"encoder.embed_tokens.weight"}, (comp, sorted(extra)[:5])
        assert {k: shapes[k] for k in published} == published, comp


def test_the_embedded_release_and_real_configs_are_shipped():
    sources = {c: open_streaming(family.official_component_file(RELEASE, c)) for c in family.COMPONENTS}
    cfgs = wan_release._target_configs(family.read_official_config(RELEASE), "tiny", sources)
    assert layouts.lookup(FAM, cfgs) is not None
    for preset in ("1.3b", "14b"):
        assert layouts.lookup(FAM, layouts.known_configs(FAM)[preset]) is not None


def test_other_configs_are_not_shipped(shipped: dict):
    cfgs = layouts.known_configs(FAM)["1.3b"]
    wider = {**cfgs, "transformer": {**cfgs["transformer"], "num_layers": 31}}
    assert layouts.lookup(FAM, wider, shipped) is None
    assert layouts.lookup(FAM, cfgs, {**shipped, "vae": [{"config": cfgs["vae"]}]}) is None  # damaged entry
    assert layouts.lookup(FAM, cfgs, {}) is None
