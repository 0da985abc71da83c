"""LTX-Video's official -> Diffusers transformer map: written by `port diff-keys` from the key listings of the
official release (runtime/models/ltx_video/reference/, the official Transformer3DModel built on the meta device),
re-inferred here, and checked against diffusers' own converter traced on the same keys."""

from __future__ import annotations

import json
from pathlib import Path

from vidport.porting.diffkeys import diff_keys
from vidport.porting.namemap import NameMap
from vidport.porting.sources import KeysFileSource

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "runtime" / "models" / "ltx_video"
OFFICIAL = FOLDER / "reference" / "official_transformer_2b_keys.txt"
DIFFUSERS = FOLDER / "reference" / "diffusers_transformer_2b_keys.txt"
MAP = FOLDER / "maps" / "official_to_diffusers_transformer.map"
TRUTH = ROOT / "tests" / "data" / "diffkeys_families" / "ltx_video" / "truth.json"


def test_the_committed_map_is_what_diff_keys_infers():
    d = diff_keys(KeysFileSource(OFFICIAL), KeysFileSource(DIFFUSERS))
    assert d.complete and not d.inference.unresolved
    assert d.evidence_counts() == {"exact name": 595, "names + shapes": 120}  # patchify_proj, adaln_single, q_norm...
    assert [r.to_line() for r in d.name_map.rules] == [r.to_line() for r in NameMap.load(MAP).rules]


def test_the_map_does_what_diffusers_converter_does():
    """Every Diffusers tensor from the official key the converter takes it from, whole (715 renames)."""
    truth = json.loads(TRUTH.read_text())["targets"]
    official = KeysFileSource(OFFICIAL)
    plan = NameMap.load(MAP).plan(official.keys())
    assert not plan.unmatched and not plan.dropped
    made = {op.target: op.sources for op in plan.ops}
    assert made == {k: tuple(p[0] for p in v["pieces"]) for k, v in truth.items()}
    shapes, target = official.shapes(), KeysFileSource(DIFFUSERS).shapes()
    assert {op.target: tuple(op.target_shape(shapes)) for op in plan.ops} == target


# --- the v0.9.1 VAE and the T5 text encoder ------------------------------------------------------------
REF = FOLDER / "reference"
VAE_MAP = FOLDER / "maps" / "official_to_diffusers_vae.map"
VAE_TRUTH = ROOT / "tests" / "data" / "diffkeys_families" / "ltx_vae_091" / "truth.json"
HAND_EDITED = [r"rename   ^vae\.per_channel_statistics\.std\-of\-means$  ->  latents_std",
               r"drop     ^vae\.per_channel_statistics\.(channel|mean\-of\-stds)$"]


def test_the_vae_map_is_what_diff_keys_infers_plus_its_two_declared_edits():
    d = diff_keys(KeysFileSource(REF / "official_vae_2b_keys.txt"), KeysFileSource(REF / "diffusers_vae_2b_keys.txt"))
    # the tied statistics are left to the user, not guessed; everything else is mapped
    assert {u.key for u in d.inference.unresolved} == {
        "latents_std", "vae.per_channel_statistics.mean-of-stds", "vae.per_channel_statistics.channel",
        "vae.per_channel_statistics.std-of-means"}
    committed = NameMap.load(VAE_MAP)
    assert [r.to_line() for r in d.name_map.rules] + HAND_EDITED == [r.to_line() for r in committed.rules]
    assert "Edited by hand" in VAE_MAP.read_text()


def test_the_vae_map_does_what_diffusers_converter_does():
    truth = json.loads(VAE_TRUTH.read_text())
    official = KeysFileSource(REF / "official_vae_2b_keys.txt")
    plan = NameMap.load(VAE_MAP).plan(official.keys())
    assert not plan.unmatched and sorted(plan.dropped) == sorted(truth["dropped"])
    made = {op.target: op.sources for op in plan.ops}
    assert made == {k: tuple(p[0] for p in v["pieces"]) for k, v in truth["targets"].items()}


def test_the_tiny_listings_follow_the_real_names():
    """The tiny official release's keys are the real release's names (fewer resnets and blocks, nothing new)."""
    real = set(KeysFileSource(REF / "official_vae_2b_keys.txt").keys())
    tiny = set(KeysFileSource(REF / "official_vae_tiny_keys.txt").keys())
    assert tiny < real
    real_t = set(KeysFileSource(REF / "official_transformer_2b_keys.txt").keys())
    tiny_t = set(KeysFileSource(REF / "official_transformer_tiny_keys.txt").keys())
    assert tiny_t < real_t
    plan = NameMap.load(VAE_MAP).plan(sorted(tiny))
    assert not plan.unmatched
    target = KeysFileSource(REF / "diffusers_vae_tiny_keys.txt").shapes()
    shapes = KeysFileSource(REF / "official_vae_tiny_keys.txt").shapes()
    assert {op.target: tuple(op.target_shape(shapes)) for op in plan.ops} == target


def test_the_text_encoder_map_ties_the_embedding_saved_once():
    """transformers saves T5's tied embedding once (shared.weight); the map feeds it to encoder.embed_tokens too."""
    from vidport.porting.sources import open_source

    from vidport.families import native_meta_module

    d = diff_keys(KeysFileSource(REF / "t5_v1_1_xxl_keys.txt"), open_source("native:ltx-video-2b/text_encoder"))
    assert d.complete and not d.inference.unresolved
    m = NameMap.load(FOLDER / "maps" / "official_to_diffusers_text_encoder.map")
    assert [r.to_line() for r in d.name_map.rules] == [r.to_line() for r in m.rules]
    target = {k: tuple(v.shape) for k, v in native_meta_module("ltx-video-2b", "text_encoder").state_dict().items()}
    plan = m.plan(KeysFileSource(REF / "t5_v1_1_xxl_keys.txt").keys())
    assert not plan.unmatched and not plan.dropped
    assert {op.target for op in plan.ops} == set(target)
    assert [op.sources for op in plan.ops if op.target == "encoder.embed_tokens.weight"] == [("shared.weight",)]


# --- the maps re-inferred from the embedded single file, by component prefix ---------------------------
def _ops(name_map: NameMap, keys) -> dict:
    plan = name_map.plan(keys)
    return {op.target: op.sources for op in plan.ops}


def test_maps_inferred_from_the_single_file_by_component_do_what_the_committed_ones_do(tmp_path):
    """`port diff-keys RELEASE REPO --component transformer|vae` on the tiny single file (alphabetical keys): the
    transformer map by names alone, the VAE map with value evidence (--match-values) against the converted repo,
    which also decides latents_std = std-of-means by content: the committed edit, confirmed by values."""
    from test_convert import port
    from vidport.porting.sources import open_source

    release = ROOT / "official_weights" / "ltx-video-tiny"
    repo = tmp_path / "repo"
    assert port("convert", str(release), "--family", "ltx-video", "--out", str(repo), "--no-progress") == 0
    ckpt = release / "ltx-video-tiny.safetensors"
    dit = open_source(f"{ckpt}#model.diffusion_model.")
    d = diff_keys(dit, open_source(str(repo / "transformer")))
    assert d.complete and not d.inference.unresolved
    assert _ops(d.name_map, dit.keys()) == _ops(NameMap.load(MAP), dit.keys())

    vae = open_source(f"{ckpt}#vae.")
    by_names = diff_keys(vae, open_source(str(repo / "vae")))
    assert not by_names.complete  # alphabetical keys: names and order cannot place every block
    d = diff_keys(vae, open_source(str(repo / "vae")), match_values=True)
    assert {u.key for u in d.inference.unresolved if u.side == "source"} == {
        "vae.per_channel_statistics.channel", "vae.per_channel_statistics.mean-of-stds"}
    inferred, committed = _ops(d.name_map, vae.keys()), _ops(NameMap.load(VAE_MAP), vae.keys())
    assert inferred == committed
    assert inferred["latents_std"] == ("vae.per_channel_statistics.std-of-means",)
