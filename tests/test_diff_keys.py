"""`port diff-keys`: inferred name maps against external ground truth, transforms, and bad input.

Ground truth is never our own code: diffusers' single-file converters for the Wan DiT and VAE, the
numerics of transformers' UMT5EncoderModel for umT5, and the native model's output vs diffusers for
the diffusers -> native map.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from vidport.porting.cli import main
from vidport.porting.diffkeys import diff_keys, format_report
from vidport.porting.generalize import build_map
from vidport.porting.infer import infer
from vidport.porting.namemap import NameMap
from vidport.porting.sources import (
    KeysFileSource,
    ModuleSource,
    StateDictSource,
    TensorDictSource,
    TensorInfo,
    open_source,
)
from vidport.runtime.loading import load_into
from vidport.runtime.models.wan import family

REF = family.REFERENCE_KEYS
TINY = Path(__file__).resolve().parents[1] / "official_weights" / "wan2.1-t2v-tiny"
LIMIT_S = 10.0  # the budget per case on a 2-core machine


def infos(pairs) -> dict[str, TensorInfo]:
    return {k: TensorInfo(k, tuple(s), "F32") for k, s in pairs}


def converter_truth(keys_file: str, convert) -> dict[str, str]:
    """target key -> source key according to a diffusers converter, run on meta tensors."""
    src = KeysFileSource(REF / keys_file)
    sd = {k: torch.empty(s, device="meta") for k, s in src.shapes().items()}
    by_id = {id(t): k for k, t in sd.items()}
    out = convert(dict(sd))
    assert all(isinstance(v, torch.Tensor) and v.is_meta for v in out.values())
    return {k: by_id[id(v)] for k, v in out.items()}


def plan_of(name_map: NameMap, keys) -> dict[str, tuple[str, ...]]:
    plan = name_map.plan(keys)
    assert not plan.unmatched, plan.unmatched[:5]
    return {op.target: op.sources for op in plan.ops}


def timed_diff(source, target):
    t0 = time.perf_counter()
    d = diff_keys(source, target)
    return d, time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------
# 1. Wan DiT official -> diffusers, real key sets, against diffusers' converter
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", ["1.3b", "14b"])
def test_dit_official_to_diffusers_equals_converter(size):
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    truth = converter_truth(f"official_dit_{size}_keys.txt", convert_wan_transformer_to_diffusers)
    src = KeysFileSource(REF / f"official_dit_{size}_keys.txt")
    d, seconds = timed_diff(src, KeysFileSource(REF / f"diffusers_dit_{size}_keys.txt"))
    got = {t: s[0] for t, s in plan_of(d.name_map, src.keys()).items()}
    assert got == truth, f"inferred vs diffusers converter differ on {len(set(got.items()) ^ set(truth.items()))}"
    assert len(got) == len(src) and d.complete
    assert len(d.name_map.rules) <= 20, d.name_map.dumps()
    assert seconds < LIMIT_S


# ----------------------------------------------------------------------------------------------
# 2. Wan VAE official -> diffusers AutoencoderKLWan, against diffusers' converter
# ----------------------------------------------------------------------------------------------
def test_vae_official_to_diffusers_equals_converter():
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    truth = converter_truth("official_vae_keys.txt", convert_wan_vae_to_diffusers)
    src = KeysFileSource(REF / "official_vae_keys.txt")
    target = open_source("native:wan2.1-t2v-1.3b/vae")  # diffusers AutoencoderKLWan on the meta device
    assert len(src) == len(target) == 194
    d, seconds = timed_diff(src, target)
    got = {t: s[0] for t, s in plan_of(d.name_map, src.keys()).items()}
    assert got == truth
    assert set(got) == set(target.keys())
    # the flat decoder indices went to (block, resnet) / upsampler pairs, inferred not typed
    assert got["decoder.up_blocks.1.resnets.1.conv1.weight"] == "decoder.upsamples.5.residual.2.weight"
    assert got["decoder.up_blocks.2.upsamplers.0.resample.1.weight"] == "decoder.upsamples.11.resample.1.weight"
    assert seconds < LIMIT_S


# ----------------------------------------------------------------------------------------------
# 3. umT5 official -> transformers UMT5EncoderModel: real key set, and numerics on a tiny pair
# ----------------------------------------------------------------------------------------------
def test_umt5_real_key_set_fills_every_target_with_the_tie():
    src = KeysFileSource(REF / "official_umt5xxl_keys.txt")
    target = KeysFileSource(REF / "transformers_umt5xxl_keys.txt")
    assert (len(src), len(target)) == (242, 243)
    d, seconds = timed_diff(src, target)
    assert d.complete and not d.unfilled_target
    ties = [c for c in d.inference.correspondences if c.kind == "tie"]
    assert [(c.sources, c.targets) for c in ties] == [
        (("token_embedding.weight",), ("shared.weight", "encoder.embed_tokens.weight"))]
    assert seconds < LIMIT_S


def official_umt5_layout(model) -> dict[str, torch.Tensor]:
    """A transformers UMT5EncoderModel's weights written in the official Wan umT5 layout.

    The correspondence comes from the official code (Wan2.1 ``wan/modules/t5.py``): T5FeedForward is
    ``fc2(fc1(x) * gelu(gate(x)))`` while transformers computes ``wo(gelu(wi_0 x) * wi_1 x)``, so
    gate.0 is wi_0 and fc1 is wi_1; norm1/norm2 are the attention/FFN layer norms; every layer has its
    own ``pos_embedding`` (relative_attention_bias); key order is the official module order.
    """
    sd = model.state_dict()
    out = {"token_embedding.weight": sd["shared.weight"]}
    for i in range(model.config.num_layers):
        p = f"encoder.block.{i}.layer."
        out[f"blocks.{i}.norm1.weight"] = sd[p + "0.layer_norm.weight"]
        for x in "qkvo":
            out[f"blocks.{i}.attn.{x}.weight"] = sd[p + f"0.SelfAttention.{x}.weight"]
        out[f"blocks.{i}.norm2.weight"] = sd[p + "1.layer_norm.weight"]
        out[f"blocks.{i}.ffn.gate.0.weight"] = sd[p + "1.DenseReluDense.wi_0.weight"]
        out[f"blocks.{i}.ffn.fc1.weight"] = sd[p + "1.DenseReluDense.wi_1.weight"]
        out[f"blocks.{i}.ffn.fc2.weight"] = sd[p + "1.DenseReluDense.wo.weight"]
        out[f"blocks.{i}.pos_embedding.embedding.weight"] = sd[p + "0.SelfAttention.relative_attention_bias.weight"]
    out["norm.weight"] = sd["encoder.final_layer_norm.weight"]
    return {k: v.clone() for k, v in out.items()}


def test_umt5_inferred_map_gives_identical_outputs():
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(**family.text_encoder_config("tiny"))
    torch.manual_seed(0)
    a = UMT5EncoderModel(config).eval()
    with torch.no_grad():  # every tensor distinct, so any swap (wi_0/wi_1, norm1/norm2) shows
        for p in a.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    official = TensorDictSource(official_umt5_layout(a), "official-layout umT5")
    torch.manual_seed(1)
    b = UMT5EncoderModel(config).eval()
    d = diff_keys(official, ModuleSource(b, "transformers UMT5EncoderModel"))
    assert d.complete
    load_into(b, official, d.name_map)
    ids = torch.randint(2, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        want = a(input_ids=ids, attention_mask=mask).last_hidden_state
        got = b(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5,
                               msg=lambda m: f"UMT5 loaded through the inferred map vs the original: {m}")


# ----------------------------------------------------------------------------------------------
# 4. diffusers -> native (merges), real key sets and the loader
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", ["1.3b", "14b"])
def test_diffusers_to_native_real_key_sets(size):
    src = KeysFileSource(REF / f"diffusers_dit_{size}_keys.txt")
    target = open_source(f"native:wan2.1-t2v-{size}")
    d, seconds = timed_diff(src, target)
    assert d.complete, d.inference.unresolved[:3]
    merges = {(c.targets[0].split(".", 2)[2], c.parts) for c in d.inference.correspondences if c.kind == "merge"}
    assert merges == {("attn.qkv.weight", ("q", "k", "v")), ("attn.qkv.bias", ("q", "k", "v")),
                      ("cross_attn.kv.weight", ("k", "v")), ("cross_attn.kv.bias", ("k", "v"))}
    assert plan_of(d.name_map, src.keys()) == plan_of(NameMap.load(family.DIFFUSERS_TO_NATIVE), src.keys())
    assert seconds < LIMIT_S


def test_diffusers_to_native_inferred_map_loads_and_matches_diffusers():
    from diffusers import WanTransformer3DModel
    from vidport.runtime.models.wan.config import preset
    from vidport.runtime.models.wan.model import WanDiT

    cfg = preset("tiny")
    torch.manual_seed(0)
    ref = WanTransformer3DModel(**{k: v for k, v in cfg.to_diffusers().items() if not k.startswith("_")}).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.dim() == 1 else 0.0))
    source = ModuleSource(ref, "diffusers tiny")
    with torch.device("meta"):
        model = WanDiT(cfg)
    d = diff_keys(source, ModuleSource(model, "native tiny"))
    assert d.complete
    load_into(model, source, d.name_map)
    x, t = torch.randn(1, 16, 1, 4, 6), torch.tensor([700.0])
    ctx = torch.randn(1, 5, cfg.text_dim)
    with torch.no_grad():
        want = ref(x, t, torch.nn.functional.pad(ctx, (0, 0, 0, cfg.text_len - 5)), return_dict=False)[0]
        got = model.eval()(x, t, ctx)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=lambda m: f"native via inferred map vs diffusers: {m}")


def test_native_to_diffusers_infers_splits():
    d = diff_keys(open_source("native:wan2.1-t2v-1.3b"), KeysFileSource(REF / "diffusers_dit_1.3b_keys.txt"))
    assert d.complete
    splits = [r for r in d.name_map.rules if r.kind == "split"]
    assert {r.parts for r in splits} == {("q", "k", "v"), ("k", "v")}
    assert all(not r.pattern.startswith("^blocks\\.0\\.") for r in splits)  # generalized over blocks


# ----------------------------------------------------------------------------------------------
# the committed maps are the inference's output, and they load the tiny release strictly
# ----------------------------------------------------------------------------------------------
COMMITTED = [
    ("transformer", "keys:" + str(REF / "official_dit_1.3b_keys.txt"),
     "keys:" + str(REF / "diffusers_dit_1.3b_keys.txt")),
    ("vae", "keys:" + str(REF / "official_vae_keys.txt"), "native:wan2.1-t2v-1.3b/vae"),
    ("text_encoder", "keys:" + str(REF / "official_umt5xxl_keys.txt"), "native:wan2.1-t2v-1.3b/text_encoder"),
]


def _rules(name_map: NameMap) -> list[str]:
    return [r.to_line() for r in name_map.rules]


@pytest.mark.parametrize("component,source,target", COMMITTED, ids=[c[0] for c in COMMITTED])
def test_committed_official_maps_are_inferred(component, source, target):
    d = diff_keys(open_source(source), open_source(target))
    assert _rules(d.name_map) == _rules(NameMap.load(family.OFFICIAL_TO_DIFFUSERS[component]))


def test_committed_diffusers_to_native_map_is_inferred():
    d = diff_keys(KeysFileSource(REF / "diffusers_dit_1.3b_keys.txt"), open_source("native:wan2.1-t2v-1.3b"))
    assert _rules(d.name_map) == _rules(NameMap.load(family.DIFFUSERS_TO_NATIVE))


@pytest.mark.parametrize("component", family.COMPONENTS)
def test_committed_maps_load_the_tiny_release_strictly(component):
    from diffusers import WanTransformer3DModel

    source = open_source(str(TINY), component)
    if component == "transformer":
        cfg = family.read_official_config(TINY)
        with torch.device("meta"):
            module = WanTransformer3DModel(**{k: v for k, v in cfg.to_diffusers().items() if not k.startswith("_")})
    else:
        module = family.build_component(component, "tiny", "meta")
    loaded = load_into(module, source, NameMap.load(family.OFFICIAL_TO_DIFFUSERS[component]))
    assert loaded == set(module.state_dict())


@pytest.mark.parametrize("component", ["vae", "text_encoder"])
def test_tiny_release_infers_the_committed_mapping(component):
    source = open_source(str(TINY), component)
    d = diff_keys(source, open_source(f"native:wan2.1-t2v-tiny/{component}"))
    assert d.complete
    committed = NameMap.load(family.OFFICIAL_TO_DIFFUSERS[component])
    assert plan_of(d.name_map, source.keys()) == plan_of(committed, source.keys())


def test_alphabetical_listing_reports_indistinguishable_instead_of_guessing(tmp_path):
    """The tiny DiT safetensors lists keys alphabetically, so self_attn/cross_attn vs attn1/attn2 has no
    evidence at all: the inference must say so, with both candidates, and map everything else."""
    from vidport.runtime.models.wan.config import preset

    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps(preset("tiny").to_diffusers()))
    d = diff_keys(open_source(str(TINY)), open_source(f"class:diffusers.WanTransformer3DModel@{cfg_path}"))
    assert not d.inference.source_order_informative
    unresolved = {u.key: u for u in d.inference.unresolved}
    assert unresolved and all("_attn." in k for k in unresolved)
    u = unresolved["blocks.0.self_attn.q.weight"]
    assert sorted(u.candidates) == ["blocks.0.attn1.to_q.weight", "blocks.0.attn2.to_q.weight"]
    assert "indistinguishable" in u.reason
    mapped = d.inference.mapped()
    assert mapped["blocks.1.norm3.weight"] == ["blocks.1.norm2.weight"]  # the swap pitfall, still right
    assert not any(k in mapped for k in unresolved)


# ----------------------------------------------------------------------------------------------
# transforms on small synthetic layouts
# ----------------------------------------------------------------------------------------------
def test_tie_merge_reshape_and_split_on_synthetic_layouts():
    src = infos([("embed.weight", [10, 4]), ("layers.0.attn.wq.weight", [4, 4]),
                 ("layers.0.attn.wk.weight", [4, 4]), ("layers.0.attn.wv.weight", [4, 4]),
                 ("layers.0.attn.out.weight", [4, 4]), ("layers.0.scale", [1, 3, 4]),
                 ("layers.1.attn.wq.weight", [4, 4]), ("layers.1.attn.wk.weight", [4, 4]),
                 ("layers.1.attn.wv.weight", [4, 4]), ("layers.1.attn.out.weight", [4, 4]),
                 ("layers.1.scale", [1, 3, 4])])
    tgt = infos([("tok.weight", [10, 4]), ("model.embed.weight", [10, 4]),
                 ("model.h.0.attention.qkv.weight", [12, 4]), ("model.h.0.attention.out_proj.weight", [4, 4]),
                 ("model.h.0.scale", [3, 4]),
                 ("model.h.1.attention.qkv.weight", [12, 4]), ("model.h.1.attention.out_proj.weight", [4, 4]),
                 ("model.h.1.scale", [3, 4])])
    inf = infer(src, tgt)
    assert not inf.unresolved
    kinds = {c.kind for c in inf.correspondences}
    assert kinds == {"tie", "merge", "rename", "reshape"}
    m = build_map(inf.correspondences, list(src))
    tensors = {k: torch.randn(v.shape) for k, v in src.items()}
    out = m.apply(tensors)
    assert set(out) == set(tgt)
    torch.testing.assert_close(out["model.h.1.attention.qkv.weight"],
                               torch.cat([tensors[f"layers.1.attn.w{x}.weight"] for x in "qkv"]))
    assert out["tok.weight"] is tensors["embed.weight"] and out["model.embed.weight"] is tensors["embed.weight"]
    assert out["model.h.0.scale"].shape == (3, 4)
    # the reverse map splits qkv again and restores the source exactly (ties collapse to one)
    back = m.reverse().apply(out)
    assert set(back) == set(src)
    for k in src:
        torch.testing.assert_close(back[k], tensors[k])


def test_a_tie_with_a_left_over_tensor_is_unresolved_not_guessed():
    """LTX-Video v0.9.1's VAE file stores four per-channel statistics; Diffusers keeps two. ``latents_std`` is
    ``std-of-means``, but ``mean-of-stds`` has the same name tokens and shape: key order must not pick one."""
    src = infos([("vae.conv.weight", [8, 3]), ("vae.per_channel_statistics.channel", [8]),
                 ("vae.per_channel_statistics.mean-of-means", [8]),
                 ("vae.per_channel_statistics.std-of-means", [8]),
                 ("vae.per_channel_statistics.mean-of-stds", [8])])
    tgt = infos([("latents_mean", [8]), ("latents_std", [8]), ("conv.weight", [8, 3])])
    inf = infer(src, tgt)
    mapped = inf.mapped()
    assert "vae.per_channel_statistics.mean-of-stds" not in mapped
    u = {x.key: x for x in inf.unresolved}
    assert sorted(u["latents_std"].candidates) == ["vae.per_channel_statistics.mean-of-stds",
                                                     "vae.per_channel_statistics.std-of-means"]
    assert mapped["vae.conv.weight"] == ["conv.weight"]


def test_fused_name_may_carry_the_common_prefix():
    src = infos([(f"l.{i}.w{x}.weight", [4, 4]) for i in range(2) for x in "qkvo"])
    tgt = infos([(f"h.{i}.attn.{n}.weight", [12 if n == "wqkv" else 4, 4]) for i in range(2) for n in ("wqkv", "wo")])
    inf = infer(src, tgt)
    assert not inf.unresolved
    merges = [c for c in inf.correspondences if c.kind == "merge"]
    assert [(c.sources, c.parts) for c in merges][0] == (("l.0.wq.weight", "l.0.wk.weight", "l.0.wv.weight"),
                                                         ("q", "k", "v"))


def test_transposed_shapes_are_not_guessed_as_reshapes():
    """[768, 2304] -> [2304, 768] (GPT-2 Conv1D vs Linear) has equal numel, but a reshape would scramble it."""
    src = infos([("h.0.attn.c_attn.weight", [8, 24]), ("h.0.ln.weight", [8])])
    tgt = infos([("layers.0.attn.qkv.weight", [24, 8]), ("layers.0.norm.weight", [8])])
    inf = infer(src, tgt)
    assert [c.kind for c in inf.correspondences] == ["rename"]
    assert [(u.key, u.candidates) for u in inf.unresolved if u.side == "source"] == [
        ("h.0.attn.c_attn.weight", ["layers.0.attn.qkv.weight"])]
    assert "transpose" in inf.unresolved[0].reason


def test_inference_is_deterministic():
    src, tgt = KeysFileSource(REF / "official_vae_keys.txt"), open_source("native:wan2.1-t2v-1.3b/vae")
    assert diff_keys(src, tgt).name_map.dumps() == diff_keys(src, tgt).name_map.dumps()


def test_equal_candidates_are_reported_not_guessed():
    src = infos([("a.left.weight", [4]), ("a.right.weight", [4]), ("a.other.bias", [2])])
    tgt = infos([("b.p.weight", [4]), ("b.o.weight", [4]), ("b.other.bias", [2])])
    src = dict(sorted(src.items()))  # alphabetical: order is no evidence either
    inf = infer(src, tgt)
    assert {u.key for u in inf.unresolved} == {"a.left.weight", "a.right.weight"}
    assert sorted(inf.unresolved[0].candidates) == ["b.o.weight", "b.p.weight"]
    assert [c.sources for c in inf.correspondences] == [("a.other.bias",)]


# ----------------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------------
def run_cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(["diff-keys", *map(str, args)])
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_cli_report_json_and_write_map(tmp_path, capsys):
    src = "keys:" + str(REF / "official_umt5xxl_keys.txt")
    code, out, _ = run_cli(capsys, src, "native:wan2.1-t2v-1.3b/text_encoder")
    assert code == 0
    assert "inferred map: 9 rules" in out and "tie      ^token_embedding" in out and "complete:" in out
    code, out, _ = run_cli(capsys, src, "native:wan2.1-t2v-1.3b/text_encoder", "--json")
    data = json.loads(out)
    for field in ("matched", "missing", "unexpected", "shape_mismatch", "rules", "transforms", "unresolved",
                  "mapped"):
        assert field in data
    assert data["mapped"]["token_embedding.weight"] == ["shared.weight", "encoder.embed_tokens.weight"]
    assert data["transforms"][0]["kind"] == "tie" and len(data["rules"]) == 9
    out_map = tmp_path / "umt5.map"
    code, out, _ = run_cli(capsys, str(TINY), "native:wan2.1-t2v-tiny", "--component", "text_encoder",
                           "--write-map", out_map)
    assert code == 0 and f"wrote {out_map}" in out
    module = family.build_component("text_encoder", "tiny", "meta")
    loaded = load_into(module, open_source(str(TINY), "text_encoder"), NameMap.load(out_map))
    assert loaded == set(module.state_dict())


def _bad_inputs(tmp: Path) -> list[tuple[str, str]]:
    """(spec, text the one-line error must contain)"""
    (tmp / "trunc.safetensors").write_bytes(b"\x10\x00")
    (tmp / "huge.safetensors").write_bytes((10**9).to_bytes(8, "little") + b"{}")
    (tmp / "notjson.safetensors").write_bytes((4).to_bytes(8, "little") + b"\xff\xfe{]")
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(tmp / "ok.safetensors"))
    data = (tmp / "ok.safetensors").read_bytes()
    (tmp / "short.safetensors").write_bytes(data[:-4])
    (tmp / "missing").mkdir()
    (tmp / "missing" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    (tmp / "escape").mkdir()
    (tmp / "escape" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../ok.safetensors"}}))
    torch.save({"w": torch.zeros(2), "step": 3}, tmp / "mixed.pt")
    torch.save({"w": torch.zeros(2), "opt": {"lr": 0.1}}, tmp / "nested.pth")
    (tmp / "bad_config.json").write_text(json.dumps({"num_attention_heads": 0}))
    return [
        (str(tmp / "trunc.safetensors"), "trunc.safetensors"),
        (str(tmp / "huge.safetensors"), "corrupt safetensors header"),
        (str(tmp / "notjson.safetensors"), "corrupt safetensors header"),
        (str(tmp / "short.safetensors"), "past the end of the file"),
        (str(tmp / "missing" / "model.safetensors.index.json"), "does not exist"),
        (str(tmp / "escape" / "model.safetensors.index.json"), "outside its folder"),
        (str(tmp / "mixed.pt"), "mixed.pt"),
        (str(tmp / "nested.pth"), "nested.pth"),
        ("native:wan2.1-t2v-99b", "99b"),
        ("native:nofamily-1b", "nofamily-1b"),
        (f"class:diffusers.WanTransformer3DModel@{tmp / 'bad_config.json'}", "WanTransformer3DModel"),
        ("class:torch.nn.Linear", "torch.nn.Linear"),
        ("class:no_such_module.Model", "no_such_module"),
        (str(tmp / "nothing_here.safetensors"), "nothing_here"),
    ]


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    for spec, must in _bad_inputs(tmp_path):
        code, out, err = run_cli(capsys, spec, "native:wan2.1-t2v-tiny")
        lines = err.strip().splitlines()
        assert code == 2, (spec, code, out, err)
        assert len(lines) == 1 and lines[0].startswith("error: ") and must in lines[0], (spec, err)
        assert "Traceback" not in err + out


def test_cli_hub_offline_is_one_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run([sys.executable, "-c", "from vidport.porting.cli import main; main()", "diff-keys",
                           "hf:Wan-AI/Wan2.1-T2V-1.3B-Diffusers/transformer", "native:wan2.1-t2v-tiny"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "hf:Wan-AI/Wan2.1-T2V-1.3B-Diffusers/transformer" in lines[0]
    assert "Traceback" not in proc.stderr


def test_tiny_official_dit_to_native_equals_the_composed_committed_maps():
    """Alphabetical listing, but names tell self_attn->attn and cross_attn->cross_attn apart: the map
    straight from the tiny release to native equals official->diffusers (checked against diffusers'
    converter above) followed by diffusers->native (checked numerically above)."""
    source = open_source(str(TINY))
    d = diff_keys(source, open_source("native:wan2.1-t2v-tiny"))
    assert d.complete
    to_diffusers = {t: s[0] for t, s in plan_of(NameMap.load(family.OFFICIAL_TO_DIFFUSERS["transformer"]),
                                                 source.keys()).items()}
    composed = {t: tuple(to_diffusers[s] for s in srcs)
                for t, srcs in plan_of(NameMap.load(family.DIFFUSERS_TO_NATIVE), list(to_diffusers)).items()}
    assert plan_of(d.name_map, source.keys()) == composed


def test_diffusers_to_official_is_the_converter_inverted():
    """The other direction: no tie-breaking table either way, same rule budget."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    truth = {s: (t,) for t, s in converter_truth("official_dit_14b_keys.txt",
                                                 convert_wan_transformer_to_diffusers).items()}
    src = KeysFileSource(REF / "diffusers_dit_14b_keys.txt")
    d = diff_keys(src, KeysFileSource(REF / "official_dit_14b_keys.txt"))
    assert plan_of(d.name_map, src.keys()) == {k: truth[k] for k in truth}
    assert len(d.name_map.rules) <= 20


def test_transformers_to_official_umt5_flags_the_tied_copy():
    d = diff_keys(KeysFileSource(REF / "transformers_umt5xxl_keys.txt"),
                  KeysFileSource(REF / "official_umt5xxl_keys.txt"))
    assert [(u.key, u.candidates) for u in d.inference.unresolved] == [("shared.weight", ["token_embedding.weight"])]
    assert "tied copy" in d.inference.unresolved[0].reason and not d.unfilled_target


@pytest.mark.parametrize("path", sorted(family.MAPS.glob("*.map")), ids=lambda p: p.name)
def test_committed_maps_reverse(path):
    name_map = NameMap.load(path)
    assert name_map.reverse().rules  # derivable, never written twice


# ----------------------------------------------------------------------------------------------
# precision before coverage: equal names beat key order
# ----------------------------------------------------------------------------------------------
def _prefixed_layout(prefix: str, shuffle_seed: int | None):
    """A Diffusers transformer's keys as a single-file release lists them: every key under ``prefix``,
    in another order (many tensors share shapes, so order alone would mislead)."""
    import random

    from diffusers import LTXVideoTransformer3DModel

    with torch.device("meta"):
        model = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=8,
                                           cross_attention_dim=16, num_layers=3, caption_channels=12)
    target = ModuleSource(model, "diffusers")
    keys = list(target.infos)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(keys)
    source = StateDictSource()
    source._infos = {prefix + k: target.infos[k] for k in keys}
    source.description = "single-file release"
    return source, target


@pytest.mark.parametrize("shuffle_seed", [None, 0, 1])
def test_equal_names_after_a_prefix_always_map(shuffle_seed):
    """Keys that differ only by a leading prefix map name for name, whatever the key order (an earlier
    version mapped 452 of 715 such keys of a real family onto the wrong tensor, confidently)."""
    source, target = _prefixed_layout("model.diffusion_model.", shuffle_seed)
    d = diff_keys(source, target)
    assert d.complete and not d.inference.unresolved
    mapped = d.inference.mapped()
    wrong = {s: t for s, t in mapped.items() if t != [s.removeprefix("model.diffusion_model.")]}
    assert not wrong, list(wrong.items())[:3]
    assert d.evidence_counts() == {"exact name": len(target.keys())}
    assert d.to_json()["evidence"]["transformer_blocks.0.attn1.to_q.weight"] == "exact name"
    assert "decided by: exact name" in format_report(d)


def test_a_module_sized_suffix_match_is_no_prefix():
    """A Diffusers VAE's ``decoder.up_blocks.0.resnets.0.conv1`` is not the official top-level ``conv1``:
    a prefix that explains one module is not evidence (the Wan VAE listings stay 100%)."""
    from vidport.porting.infer import exact_name_pairs

    src = {"conv1.weight": TensorInfo("conv1.weight", (4, 4), "F32"),
           "conv1.bias": TensorInfo("conv1.bias", (4,), "F32"),
           **{f"enc.{i}.w": TensorInfo(f"enc.{i}.w", (i + 5,), "F32") for i in range(8)}}
    tgt = {"up.0.resnets.0.conv1.weight": TensorInfo("", (4, 4), "F32"),
           "up.0.resnets.0.conv1.bias": TensorInfo("", (4,), "F32"),
           **{f"encoder.{i}.w": TensorInfo("", (i + 5,), "F32") for i in range(8)}}
    assert exact_name_pairs(src, tgt) == {}


def test_unequal_split_and_its_reverse():
    """A fused projection of unequal parts (q, k, v and an MLP input, as single-stream DiT blocks fuse
    them) splits by sizes= and the reverse merge puts it back; the text form round-trips."""
    text = ("# vidport name map v1\n"
            "split    ^blocks\\.(\\d+)\\.linear1\\.weight$  ->  blocks.\\1.{part}.weight  "
            "parts=to_q,to_k,to_v,proj_mlp dim=0 sizes=4,4,4,16\n")
    m = NameMap.loads(text)
    assert NameMap.loads(m.dumps()).rules == m.rules
    w = torch.arange(28 * 3, dtype=torch.float32).reshape(28, 3)
    out = m.apply({"blocks.0.linear1.weight": w})
    assert [tuple(out[f"blocks.0.{p}.weight"].shape) for p in ("to_q", "to_k", "to_v", "proj_mlp")] == \
        [(4, 3), (4, 3), (4, 3), (16, 3)]
    assert torch.equal(out["blocks.0.proj_mlp.weight"], w[12:])
    plan = m.plan(["blocks.0.linear1.weight"])
    assert plan.targets["blocks.0.to_v.weight"].target_shape({"blocks.0.linear1.weight": (28, 3)}) == (4, 3)
    with pytest.raises(Exception, match="sizes"):
        plan.targets["blocks.0.to_v.weight"].target_shape({"blocks.0.linear1.weight": (30, 3)})
    back = m.reverse().apply(out)
    assert torch.equal(back["blocks.0.linear1.weight"], w)
    with pytest.raises(Exception, match="one size per part"):
        NameMap.loads(text.replace("sizes=4,4,4,16", "sizes=4,4,20"))


def test_fused_tensor_found_by_shape_arithmetic():
    """A fused key/value projection whose name spells nothing (``kv_linear`` -> ``to_k``, ``to_v``) and a
    fused input projection of unequal parts are split by shape arithmetic where the context puts them;
    the map applies with its sizes."""
    d, mlp = 8, 24

    def info(name, *shape):
        return name, TensorInfo(name, shape, "F32")

    src, tgt = {}, {}
    for i in range(2):
        src.update([info(f"layers.{i}.norm_x.weight", d), info(f"layers.{i}.kv_linear.weight", 2 * d, d),
                    info(f"layers.{i}.q_linear.weight", d, d), info(f"layers.{i}.fc_in.weight", d + mlp, d),
                    info(f"layers.{i}.out.weight", d, d + mlp)])
        tgt.update([info(f"blocks.{i}.norm.weight", d), info(f"blocks.{i}.attn.to_q.weight", d, d),
                    info(f"blocks.{i}.attn.to_k.weight", d, d), info(f"blocks.{i}.attn.to_v.weight", d, d),
                    info(f"blocks.{i}.mix.a_proj.weight", d, d), info(f"blocks.{i}.mix.b_mlp.weight", mlp, d),
                    info(f"blocks.{i}.proj_out.weight", d, d + mlp)])
    source, target = StateDictSource(), StateDictSource()
    source._infos, target._infos = src, tgt
    result = diff_keys(source, target)
    splits = {c.sources[0]: c for c in result.inference.correspondences if c.kind == "split"}
    assert splits["layers.0.kv_linear.weight"].targets == ("blocks.0.attn.to_k.weight", "blocks.0.attn.to_v.weight")
    fc = splits["layers.1.fc_in.weight"]
    assert fc.targets == ("blocks.1.mix.a_proj.weight", "blocks.1.mix.b_mlp.weight") and fc.sizes == (d, mlp)
    assert fc.evidence == "fused parts (shape arithmetic + context)"
    assert result.complete, format_report(result)
    w = torch.randn(d + mlp, d)
    out = result.name_map.apply({k: torch.zeros(v.shape) for k, v in src.items()} | {"layers.1.fc_in.weight": w})
    assert torch.equal(out["blocks.1.mix.b_mlp.weight"], w[d:])


def _parallel_block(order: str, *, other=("ff_in",)) -> tuple[dict, dict]:
    """A toy parallel block nobody wrote the inference around: one fused input projection ``in_proj`` whose rows
    are laid out in ``order`` ("attention-first": q, k, v, then ``other``; else ``other`` first); the target keeps
    q/k/v under ``mixer`` and lists ``other`` before it. Returns (source tensors, target tensors, slices)."""
    g = torch.Generator().manual_seed(0)
    d, m = 4, 12
    src, tgt = {}, {}
    for i in range(2):
        q, k, v = (torch.randn(d, d, generator=g) for _ in range(3))
        rest = [torch.randn(m, d, generator=g) for _ in other]
        fused = torch.cat([q, k, v, *rest] if order == "attention-first" else [*rest, q, k, v])
        src.update({f"layers.{i}.norm.weight": torch.randn(d, generator=g), f"layers.{i}.in_proj.weight": fused,
                    f"layers.{i}.out_proj.weight": torch.randn(d, 3 * d, generator=g)})
        tgt.update({f"blocks.{i}.norm.weight": src[f"layers.{i}.norm.weight"]})
        tgt.update({f"blocks.{i}.{o}.weight": r for o, r in zip(other, rest)})
        tgt.update({f"blocks.{i}.mixer.to_q.weight": q, f"blocks.{i}.mixer.to_k.weight": k,
                    f"blocks.{i}.mixer.to_v.weight": v,
                    f"blocks.{i}.proj_out.weight": src[f"layers.{i}.out_proj.weight"]})
    return src, tgt


def test_fused_across_modules_split_in_the_attention_convention(tmp_path):
    """A fused projection whose parts live in different modules (q/k/v under the attention module, the MLP input
    beside it) and whose name spells nothing: names cannot order the parts, so the split takes the attention
    convention (q, k, v, then the other part), says so (evidence, ``part_order_warnings``, the report, a comment
    in the written map) and the map and its reverse apply exactly."""
    from vidport.porting.api import write_map

    src, tgt = _parallel_block("attention-first")
    d = diff_keys(TensorDictSource(src, "official"), TensorDictSource(tgt, "diffusers"))
    assert d.complete, format_report(d)
    (c,) = [c for c in d.inference.correspondences if c.sources == ("layers.1.in_proj.weight",)]
    assert c.kind == "split" and c.parts == ("mixer.to_q", "mixer.to_k", "mixer.to_v", "ff_in")
    assert c.sizes == (4, 4, 4, 12) and c.evidence == "fused parts (shape arithmetic; part order by convention)"
    assert len(d.part_order_warnings()) == 2 and "check part order" in format_report(d)
    out = d.name_map.apply(src)
    assert set(out) == set(tgt) and all(torch.equal(out[k], tgt[k]) for k in tgt)
    assert all(torch.equal(v, src[k]) for k, v in d.name_map.reverse().apply(tgt).items())
    write_map(d, tmp_path / "m.map", "# written by: test")
    text = (tmp_path / "m.map").read_text()
    assert text.count("# check part order: layers.0.in_proj.weight") == 1
    assert NameMap.loads(text).rules == d.name_map.rules
    # seen from the other side: a merge across modules, in the same order
    back = diff_keys(TensorDictSource(tgt, "diffusers"), TensorDictSource(src, "official"))
    assert back.complete and len(back.part_order_warnings()) == 2, format_report(back)
    assert all(torch.equal(v, src[k]) for k, v in back.name_map.apply(tgt).items())


def test_values_overrule_the_attention_convention():
    """The same block laid out MLP-first: names alone give the conventional (here wrong) order but flag it;
    --match-values finds the real slices across modules and the map is exact."""
    src, tgt = _parallel_block("mlp-first")
    names_only = diff_keys(TensorDictSource(src, "official"), TensorDictSource(tgt, "diffusers"))
    assert names_only.part_order_warnings()
    by_values = diff_keys(TensorDictSource(src, "official"), TensorDictSource(tgt, "diffusers"), match_values=True)
    assert by_values.complete and not by_values.part_order_warnings(), format_report(by_values)
    out = by_values.name_map.apply(src)
    assert set(out) == set(tgt) and all(torch.equal(out[k], tgt[k]) for k in tgt)


@pytest.mark.parametrize("case", ["two other parts", "attention parts in two modules"])
def test_fusions_across_modules_outside_the_convention_stay_unresolved(case):
    """Two non-attention parts (their order is anyone's guess), or q/k/v that are not one attention module's:
    reported with candidates, never guessed."""
    if case == "two other parts":
        src, tgt = _parallel_block("attention-first", other=("ff_in", "gate_in"))
    else:
        src, tgt = _parallel_block("attention-first")
        tgt = {k.replace("mixer.to_v", "mixer2.to_v"): v for k, v in tgt.items()}
    d = diff_keys(TensorDictSource(src, "official"), TensorDictSource(tgt, "diffusers"))
    assert not d.part_order_warnings() and not any(c.sources == ("layers.0.in_proj.weight",)
                                                   for c in d.inference.correspondences)
    assert any(u.key == "layers.0.in_proj.weight" for u in d.inference.unresolved), format_report(d)


def test_a_number_inside_a_segment_is_captured():
    """``blocks.block7`` -> ``transformer_blocks.7`` (Cosmos numbers its blocks inside the segment): one rule with
    ``block(\\d+)``, not one per block; the map and its reverse apply exactly."""
    d = 4
    src = {f"net.blocks.block{i}.attn.to_q.0.weight": torch.full((d, d), float(i)) for i in range(12)}
    tgt = {f"transformer_blocks.{i}.attn1.to_q.weight": torch.full((d, d), float(i)) for i in range(12)}
    result = diff_keys(TensorDictSource(src, "official"), TensorDictSource(tgt, "diffusers"), match_values=True)
    assert [r.to_line().split()[1] for r in result.name_map.rules] == \
        [r"^net\.blocks\.block(\d+)\.attn\.to_q\.0\.weight$"]
    out = result.name_map.apply(src)
    assert set(out) == set(tgt) and all(torch.equal(out[k], tgt[k]) for k in tgt)
    back = result.name_map.reverse().apply(tgt)
    assert set(back) == set(src) and all(torch.equal(back[k], src[k]) for k in src)


# ----------------------------------------------------------------------------------------------
# value evidence (--match-values)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("component", family.COMPONENTS)
def test_values_decide_every_key_of_the_tiny_release(component, tmp_path):
    """The embedded official release against its own conversion: equal contents decide every key, and the
    map is the committed one (the umT5 tie and the Wan norm2/norm3 swap included)."""
    repo = tmp_path / "repo"
    assert main_exit(["convert", str(TINY), "--family", "wan2.1-t2v", "-o", str(repo), "--no-progress"]) == 0
    d = diff_keys(open_source(str(TINY), component), open_source(str(repo), component), match_values=True)
    assert d.complete and not d.inference.unresolved
    assert set(d.evidence_counts()) == {"values"}
    committed = NameMap.load(family.OFFICIAL_TO_DIFFUSERS[component])
    keys = open_source(str(TINY), component).keys()
    assert plan_of(d.name_map, keys) == plan_of(committed, keys)


def main_exit(argv) -> int:
    try:
        main(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_values_see_swapped_halves_and_fused_slices():
    """A converter that swaps an adaLN table's shift/scale halves and fuses q/k/v: names and shapes only
    warn ("check row order"); values decide the permutation and the slices, and the map reproduces the
    target's tensors exactly."""
    g = torch.Generator().manual_seed(0)
    d = 16
    src = {"final_layer.adaLN_modulation.1.weight": torch.randn(2 * d, d, generator=g),
           "final_layer.linear.weight": torch.randn(4, d, generator=g),
           "blocks.0.attn.q.weight": torch.randn(d, d, generator=g),
           "blocks.0.attn.k.weight": torch.randn(d, d, generator=g),
           "blocks.0.attn.v.weight": torch.randn(d, d, generator=g),
           "blocks.0.mlp.weight": torch.randn(3 * d, d, generator=g)}
    shift, scale = src["final_layer.adaLN_modulation.1.weight"].chunk(2)
    tgt = {"norm_out.linear.weight": torch.cat([scale, shift]),  # halves swapped
           "proj_out.weight": src["final_layer.linear.weight"],
           "blocks.0.attn.qkv_fused.weight": torch.cat([src[f"blocks.0.attn.{p}.weight"] for p in "qkv"]),
           "blocks.0.ff.weight": src["blocks.0.mlp.weight"]}
    source, target = TensorDictSource(src, "official"), TensorDictSource(tgt, "diffusers")

    names_only = diff_keys(source, target)
    assert any(w["target"] == "norm_out.linear.weight" and w["chunks"] == 2
               for w in names_only.row_order_warnings())
    assert "check row order" in format_report(names_only)

    by_values = diff_keys(source, target, match_values=True)
    assert by_values.complete and set(by_values.evidence_counts()) == {"values"}
    perm = [c.perm for c in by_values.inference.correspondences if c.targets == ("norm_out.linear.weight",)]
    assert perm == [(1, 0)]
    out = by_values.name_map.apply(src)
    assert set(out) == set(tgt) and all(torch.equal(out[k], tgt[k]) for k in tgt)
    assert "perm=1,0" in by_values.name_map.dumps()
    back = by_values.name_map.reverse().apply(tgt)
    assert torch.equal(back["final_layer.adaLN_modulation.1.weight"], src["final_layer.adaLN_modulation.1.weight"])


def test_match_values_needs_tensors(capsys):
    assert main_exit(["diff-keys", "keys:runtime/models/wan/reference/official_vae_keys.txt",
                      "native:wan2.1-t2v-tiny/vae", "--match-values"]) == 2
    assert "needs tensors on both sides" in capsys.readouterr().err
