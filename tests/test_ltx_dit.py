"""Native LTX-Video DiT vs diffusers LTXVideoTransformer3DModel (the external reference) with the same weights,
loaded through the committed Diffusers -> native map; the real 2B key set on the meta device; the text mask."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from vidport.porting.diffkeys import diff_keys
from vidport.porting.namemap import NameMap
from vidport.porting.sources import KeysFileSource, ModuleSource, open_source
from vidport.runtime.loading import load_into
from vidport.runtime.models.ltx_video.config import LTXDiTConfig, preset
from vidport.runtime.models.ltx_video.model import LTXDiT

HERE = Path(__file__).resolve().parent
MAP_FILE = HERE.parent / "runtime" / "models" / "ltx_video" / "maps" / "diffusers_to_native.map"
DIFFUSERS_MAP = NameMap.load(MAP_FILE)
# the released 2B transformer's Diffusers key listing (issue 18's data; its SOURCE.md says how it was made)
RELEASED_KEYS = HERE / "data" / "diffkeys_families" / "ltx_video" / "diffusers_keys.txt"
# Lightricks/LTX-Video transformer/config.json (v0.9.1 keeps v0.9's transformer)
RELEASED_CONFIG = {
    "_class_name": "LTXVideoTransformer3DModel", "activation_fn": "gelu-approximate", "attention_bias": True,
    "attention_head_dim": 64, "attention_out_bias": True, "caption_channels": 4096, "cross_attention_dim": 2048,
    "in_channels": 128, "norm_elementwise_affine": False, "norm_eps": 1e-06, "num_attention_heads": 32,
    "num_layers": 28, "out_channels": 128, "patch_size": 1, "patch_size_t": 1, "qk_norm": "rms_norm_across_heads",
}
GRID = (3, 4, 6)  # latent frames x height x width: non-square, 72 tokens
TEXT_LEN, VALID = 9, (7, 3)  # text tokens, and how many are real per sample
ROPE_SCALE = (8 / 25, 32, 32)  # what LTX's pipeline passes at 25 fps (VAE strides 8 and 32)
ATOL = 1e-5  # fp32


def diffusers_model(cfg: LTXDiTConfig):
    from diffusers import LTXVideoTransformer3DModel

    return LTXVideoTransformer3DModel(**{k: v for k, v in cfg.to_diffusers().items() if not k.startswith("_")})


@pytest.fixture(scope="module")
def pair():
    """(diffusers reference, native model) with the same random weights; both on SDPA's math kernel."""
    cfg = preset("tiny")
    torch.manual_seed(0)
    ref = diffusers_model(cfg)
    # randomize everything (modulation tables and norm weights included) so no path hides behind an init value
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.dim() > 1 else 0.1) / max(1, p.shape[-1]) ** 0.5
                    + (1.0 if name.endswith(("norm_q.weight", "norm_k.weight")) else 0.0))
    ref.set_attention_backend("_native_math")
    with torch.device("meta"):
        model = LTXDiT(cfg)
    loaded = load_into(model, ModuleSource(ref, "diffusers tiny"), DIFFUSERS_MAP)
    assert loaded == set(model.state_dict())
    model.set_attention_backend("sdpa-math")
    return ref.eval(), model.eval()


def inputs(cfg: LTXDiTConfig, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, GRID[0] * GRID[1] * GRID[2], cfg.in_channels, generator=g)
    text = torch.randn(2, TEXT_LEN, cfg.caption_channels, generator=g)
    mask = torch.zeros(2, TEXT_LEN, dtype=torch.int64)
    for i, n in enumerate(VALID):
        mask[i, :n] = 1
    return x, text, torch.tensor([937.5, 214.0]), mask


def run_both(pair, x, text, t, mask, scale=ROPE_SCALE):
    ref, model = pair
    geometry = dict(num_frames=GRID[0], height=GRID[1], width=GRID[2], rope_interpolation_scale=scale)
    with torch.no_grad():
        want = ref(x, text, t, mask, **geometry, return_dict=False)[0]
        got = model(x, text, t, mask, **geometry)
    return got, want


@pytest.mark.parametrize("scale", [ROPE_SCALE, None], ids=["rope-scaled", "rope-unscaled"])
def test_tiny_native_matches_diffusers_fp32(pair, scale):
    x, text, t, mask = inputs(preset("tiny"))
    got, want = run_both(pair, x, text, t, mask, scale)
    assert got.shape == want.shape == (2, x.shape[1], preset("tiny").out_channels)
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL, msg=lambda m: f"native LTXDiT vs diffusers: {m}")


def test_masked_text_tokens_change_nothing_and_valid_ones_do(pair):
    _, model = pair
    x, text, t, mask = inputs(preset("tiny"))
    geometry = dict(num_frames=GRID[0], height=GRID[1], width=GRID[2], rope_interpolation_scale=ROPE_SCALE)
    with torch.no_grad():
        base = model(x, text, t, mask, **geometry)
        padded = text.clone()
        padded[0, VALID[0]:] = 100.0  # masked-out tokens of both samples
        padded[1, VALID[1]:] = -100.0
        assert torch.equal(model(x, padded, t, mask, **geometry), base)
        valid = text.clone()
        valid[1, VALID[1] - 1] += 1.0  # a real token of sample 1
        out = model(x, valid, t, mask, **geometry)
    assert (out[1] - base[1]).abs().max() > 1e-3
    assert torch.equal(out[0], base[0])  # the samples do not mix


def test_sample_without_text_tokens_attends_to_all_like_diffusers(pair):
    _, model = pair
    x, text, t, mask = inputs(preset("tiny"))
    mask[1] = 0  # the reference's -10000 bias then weighs every key the same
    got, want = run_both(pair, x, text, t, mask)
    all_real = mask.clone()
    all_real[1] = 1
    geometry = dict(num_frames=GRID[0], height=GRID[1], width=GRID[2], rope_interpolation_scale=ROPE_SCALE)
    with torch.no_grad():
        assert torch.equal(got, model(x, text, t, all_real, **geometry))
    # the reference's scores sit near -10000, where fp32 spacing is ~1e-3: its answer is rounded that coarsely
    # (2.1e-5 measured), so this one comparison gets a looser bound than ATOL
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4, msg=lambda m: f"native LTXDiT vs diffusers: {m}")


def test_real_2b_diffusers_keys_map_one_to_one_onto_native():
    cfg = preset("2b")
    with torch.device("meta"):
        ref, model = diffusers_model(cfg), LTXDiT(cfg)
    source, native = ModuleSource(ref, "diffusers 2b"), ModuleSource(model, "native 2b")
    assert source.shapes() == KeysFileSource(RELEASED_KEYS).shapes()  # the released 2B key set, 715 tensors
    plan = DIFFUSERS_MAP.plan(source.keys())
    plan.verify(source.shapes(), native.shapes(), what="native")
    assert set(plan.targets) == set(native.keys())
    assert sorted(s for op in plan.ops for s in op.sources) == sorted(source.keys())  # each used exactly once
    assert not plan.dropped and not plan.unmatched


def test_committed_map_is_inferred():
    d = diff_keys(open_source("class:diffusers.LTXVideoTransformer3DModel"),
                  open_source("class:vidport.runtime.models.ltx_video.model.LTXDiT"))
    assert d.complete
    assert [r.to_line() for r in d.name_map.rules] == [r.to_line() for r in DIFFUSERS_MAP.rules]


def test_2b_preset_is_the_released_config():
    from diffusers import LTXVideoTransformer3DModel

    assert LTXDiTConfig.from_diffusers(RELEASED_CONFIG) == preset("2b")
    assert preset("2b").to_diffusers() == RELEASED_CONFIG
    with torch.device("meta"):  # diffusers' defaults are the 2B model
        defaults = {k: v for k, v in LTXVideoTransformer3DModel().config.items() if not k.startswith("_")}
    assert {k: v for k, v in RELEASED_CONFIG.items() if not k.startswith("_")} == defaults
    tiny = preset("tiny")
    assert LTXDiTConfig.from_diffusers(tiny.to_diffusers()) == tiny


@pytest.mark.parametrize("key,value", [("qk_norm", "rms_norm"), ("norm_elementwise_affine", True),
                                       ("cross_attention_dim", 1024)])
def test_unsupported_variants_are_one_clear_error(key, value):
    with pytest.raises(ValueError, match=key):
        LTXDiTConfig.from_diffusers({**RELEASED_CONFIG, key: value})


@pytest.mark.parametrize("patch", [(1, 1), (2, 2)], ids=["patch1", "patch2"])
def test_patchify_is_diffusers_packing(patch):
    from diffusers import LTXPipeline

    p, pt = patch
    cfg = dataclasses.replace(preset("tiny"), patch_size=p, patch_size_t=pt, in_channels=4 * p * p * pt)
    with torch.device("meta"):
        model = LTXDiT(cfg)
    latents = torch.randn(2, 4, 2 * pt, 3 * p, 5 * p)
    tokens, grid = model.patchify(latents)
    assert grid == (2, 3, 5)
    assert torch.equal(tokens, LTXPipeline._pack_latents(latents, p, pt))
    assert torch.equal(model.unpatchify(tokens, grid), LTXPipeline._unpack_latents(tokens, *grid, p, pt))
    assert torch.equal(model.unpatchify(tokens, grid), latents)


def test_wrong_grid_is_one_clear_error(pair):
    _, model = pair
    x, text, t, mask = inputs(preset("tiny"))
    with pytest.raises(ValueError, match="num_frames x height x width"):
        model(x, text, t, mask, num_frames=2, height=4, width=6)


@pytest.fixture
def fused_branch(monkeypatch):
    """The blocks take their fused branch on the CPU (the kernels' PyTorch reference paths): the math of the CUDA
    path, biases left to the residual kernels included, checked in fp32 against diffusers."""
    from vidport.runtime.kernels import fused

    monkeypatch.setattr(fused, "enabled_for", lambda x, dtype=None: True)
    return fused


def test_fused_branch_with_biases_in_the_residual_kernels_matches_diffusers(pair, fused_branch):
    x, text, t, mask = inputs(preset("tiny"))
    got, want = run_both(pair, x, text, t, mask)
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL, msg=lambda m: f"fused branch vs diffusers: {m}")


def test_hooks_see_the_projections_with_their_bias(pair, fused_branch):
    """While a hook watches a block's attention, cross-attention or FFN (parity captures), their projections run as
    modules with their biases: the captured outputs are the reference's, and the block's result is unchanged."""
    _, model = pair
    x, text, t, mask = inputs(preset("tiny"))
    geometry = dict(num_frames=GRID[0], height=GRID[1], width=GRID[2], rope_interpolation_scale=ROPE_SCALE)
    seen = {}
    block = model.blocks[0]
    watched = {"attn": block.attn, "attn.proj": block.attn.proj, "cross_attn.proj": block.cross_attn.proj,
               "cross_attn.q": block.cross_attn.q, "ffn": block.ffn, "ffn.fc2": block.ffn.fc2,
               "block 1": model.blocks[1]}
    with torch.no_grad():
        plain = model(x, text, t, mask, **geometry)
        handles = [m.register_forward_hook(lambda m, a, out, name=name: seen.setdefault(name, out))
                   for name, m in watched.items()]
        try:
            hooked = model(x, text, t, mask, **geometry)
        finally:
            for h in handles:
                h.remove()
    assert set(seen) == set(watched)  # every watched projection ran as a module
    assert torch.equal(seen["attn"], seen["attn.proj"])  # the attention's output is the proj's, bias included
    assert torch.equal(seen["ffn"], seen["ffn.fc2"])
    assert isinstance(seen["block 1"], torch.Tensor)  # a watched block is not chained: it returns its stream only
    torch.testing.assert_close(hooked, plain, rtol=0, atol=ATOL)


def test_residual_kernels_add_the_bias_left_out_of_the_gemm():
    from vidport.runtime.kernels import fused

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    gate, bias = torch.randn(2, 1, 8, generator=g), torch.randn(8, generator=g)
    mul, add = torch.randn(2, 1, 8, generator=g), torch.randn(2, 1, 8, generator=g)
    torch.testing.assert_close(fused.gated_residual(x, y, gate, bias), fused.gated_residual(x, y + bias, gate))
    for gated in (gate, None):
        got = fused.residual_norm(x, y, gated, mul, add, 1e-6, rms=True, bias=bias)
        want = fused.residual_norm(x, y + bias, gated, mul, add, 1e-6, rms=True)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
    w = torch.rand(8, generator=g) + 0.5
    torch.testing.assert_close(fused.rms_norm(y, w, 1e-6, bias), fused.rms_norm(y + bias, w, 1e-6))
    # a hook anywhere among the named modules turns the shortcut off; an unnamed module's does not
    outer, inner = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert fused.unobserved(outer, inner)
    handle = inner.register_forward_pre_hook(lambda m, a: None)
    assert not fused.unobserved(outer, inner) and fused.unobserved(outer)
    handle.remove()
