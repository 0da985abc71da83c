"""Attention backends: every backend this machine can run equals the SDPA math kernel; asking for one
that cannot run is one clear line listing what can; the environment variable sets the default an argument
overrides; ``auto`` follows its table (tests/test_attention_probe.py: what it does when a backend is broken)."""

from __future__ import annotations

import sys

import pytest
import torch
from vidport.runtime import attention
from vidport.runtime.attention import ENV_OVERRIDE, available_backends, get_backend, resolve_backend
from vidport.runtime.models.wan.config import preset
from vidport.runtime.models.wan.model import WanDiT

from vidport.errors import UserError

CPU_BACKENDS = available_backends("cpu")


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.delenv(ENV_OVERRIDE, raising=False)


def qkv(seed=0, batch=2, seq=37, heads=3, head_dim=16):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, seq, heads, head_dim, generator=g) for _ in range(3)]


def test_cpu_runs_the_portable_backends():
    assert CPU_BACKENDS == ["sdpa", "sdpa-flash", "sdpa-math"]


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_backend_equals_sdpa_math(name):
    q, k, v = qkv()
    want = attention.sdpa_math(q, k, v)
    got = get_backend(name)(q, k, v)
    assert got.shape == q.shape  # [B, S, H, D] in and out
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=lambda m: f"{name} vs sdpa-math: {m}")


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_backend_key_mask_equals_dropping_the_keys(name):
    q, k, v = qkv(seed=1)
    keep = torch.ones(2, 37, dtype=torch.bool)
    keep[0, 30:] = False  # batch element 0 has 7 padded keys
    got = get_backend(name)(q, k, v, keep)
    want0 = attention.sdpa_math(q[:1], k[:1, :30], v[:1, :30])
    torch.testing.assert_close(got[:1], want0, rtol=0, atol=1e-5)
    torch.testing.assert_close(got[1:], attention.sdpa_math(q[1:], k[1:], v[1:]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_tiny_dit_same_output_on_every_backend(name):
    torch.manual_seed(0)
    model = WanDiT(preset("tiny")).eval()
    x, t, ctx = torch.randn(1, 16, 2, 6, 8), torch.tensor([500.0]), torch.randn(1, 5, 32)
    with torch.no_grad():
        model.set_attention_backend("sdpa-math")
        want = model(x, t, ctx)
        model.set_attention_backend(resolve_backend(name, "cpu"))
        got = model(x, t, ctx)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_unavailable_backend_is_one_clear_line():
    with pytest.raises(UserError) as info:
        resolve_backend("sdpa-cudnn", "cpu")
    message = str(info.value)
    assert message == ("attention backend 'sdpa-cudnn' cannot run on cpu; "
                       "runnable here: auto, sdpa, sdpa-flash, sdpa-math")
    assert isinstance(info.value, ValueError)  # callers catching ValueError keep working


def test_unknown_backend_lists_the_runnable_ones():
    with pytest.raises(UserError, match=r"^unknown attention backend 'xformers'; runnable here: auto, sdpa, "):
        resolve_backend("xformers", "cpu")


def test_environment_variable_sets_the_default(monkeypatch):
    assert resolve_backend("sdpa", "cpu") == "sdpa"
    monkeypatch.setenv(ENV_OVERRIDE, "sdpa-math")
    assert resolve_backend("sdpa", "cpu") == "sdpa"  # an explicit argument beats the environment
    assert resolve_backend(None, "cpu") == "sdpa-math"
    monkeypatch.setenv(ENV_OVERRIDE, "flash-attn")
    assert resolve_backend("sdpa", "cpu") == "sdpa"
    with pytest.raises(UserError, match=f"^attention backend {ENV_OVERRIDE}=flash-attn cannot run on cpu;"):
        resolve_backend(None, "cpu")


def test_auto_follows_the_table(monkeypatch):
    """The rules alone (which backends ``auto`` tries, best first); whether each runs is probed at resolve time
    (tests/test_attention_probe.py)."""
    assert resolve_backend("auto", "cpu") == "sdpa"
    assert resolve_backend(None, "cpu") == "sdpa"
    assert attention.auto_candidates("cpu", torch.float32) == []
    # pretend to be a GPU of a given compute capability; the table decides
    capability = {"value": (9, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability["value"])
    # Hopper, measured fastest: FlashAttention-4, else cuDNN
    assert attention.auto_candidates("cuda", torch.bfloat16) == ["flash-attn-4", "sdpa-cudnn"]
    assert attention.auto_candidates("cuda", torch.float32) == []  # cuDNN attention has no fp32 kernel
    capability["value"] = (8, 0)
    assert attention.auto_candidates("cuda", torch.bfloat16) == []
    for rule in attention.AUTO_RULES:  # every rule names a real backend and says where it comes from
        assert rule.backend in attention.BACKENDS and rule.measured


def test_auto_picks_per_attention_kind(monkeypatch):
    """Hopper: FA4 first for the self-attention, cuDNN for the short cross-attention (BENCHMARKS.md). A named
    backend serves both kinds."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert attention.auto_candidates("cuda", torch.bfloat16, kind="self") == ["flash-attn-4", "sdpa-cudnn"]
    assert attention.auto_candidates("cuda", torch.bfloat16, kind="cross") == ["sdpa-cudnn"]
    assert attention.resolve_backends("sdpa-math", "cpu") == ("sdpa-math", "sdpa-math")
    # FA4 wins at head_dim 128 (Wan), not at 64 (LTX-Video: cuDNN is faster there); unknown head size: the table
    assert attention.auto_candidates("cuda", torch.bfloat16, head_dim=128) == ["flash-attn-4", "sdpa-cudnn"]
    assert attention.auto_candidates("cuda", torch.bfloat16, head_dim=64) == ["sdpa-cudnn"]
    with pytest.raises(ValueError, match="attention kind 'joint'"):
        attention.auto_backend("cuda", torch.bfloat16, kind="joint")


def test_flash_attn_4_tile(monkeypatch):
    """The self-attention on Hopper runs flash-attn-4's forward with vidport's tuned sm90 tile (BENCHMARKS.md:
    192x128 was 2% faster in the model than the library's 128x128); other shapes and GPUs keep the library's
    choice; VIDPORT_FA4_TILE overrides, read once when the backend is resolved (not per call), and a malformed
    value is one line naming the variable."""
    import types

    calls = []

    def fake_fwd(q, k, v, tile_mn=None, mma_pv_is_rs=None, intra_wg_overlap=None, num_threads=384):
        # stands in for flash_attn.cute.interface._flash_attn_fwd (same keyword names)
        kwargs = {"tile_mn": tile_mn, "mma_pv_is_rs": mma_pv_is_rs, "intra_wg_overlap": intra_wg_overlap,
                  "num_threads": num_threads}
        calls.append({k: v for k, v in kwargs.items() if v is not None and (k != "num_threads" or tile_mn)})
        return attention.sdpa_math(q, k, v), None

    def fake_func(q, k, v):  # flash_attn.cute.flash_attn_func: the library's own tile
        calls.append({})
        return attention.sdpa_math(q, k, v)

    interface = types.ModuleType("flash_attn.cute.interface")
    interface._flash_attn_fwd = fake_fwd
    cute = types.ModuleType("flash_attn.cute")
    cute.flash_attn_func = fake_func
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", interface)
    attention._fa4_forward_with_tiles.cache_clear()
    monkeypatch.setattr(attention, "_FA4_TILES", {})
    capability = {"value": (9, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability["value"])
    monkeypatch.delenv(attention.FA4_TILE_ENV, raising=False)
    q = torch.randn(1, 8, 2, 128)
    long_kv, short_kv = torch.randn(1, 4096, 2, 128), torch.randn(1, 512, 2, 128)
    resolve = attention.resolve_fa4_tiles  # what resolving flash-attn-4 on a device does

    out = attention.flash_attn_4(q, long_kv, long_kv)  # never resolved: decided on first use
    torch.testing.assert_close(out, attention.sdpa_math(q, long_kv, long_kv))
    assert calls[-1] == {"tile_mn": (192, 128), "mma_pv_is_rs": True, "intra_wg_overlap": False,
                         "num_threads": 512}
    attention.flash_attn_4(q, short_kv, short_kv)  # the cross-attention: the library's table
    assert calls[-1] == {}
    capability["value"] = (10, 0)  # Blackwell: the library's table
    resolve(q.device)
    attention.flash_attn_4(q, long_kv, long_kv)
    assert calls[-1] == {}
    monkeypatch.setenv(attention.FA4_TILE_ENV, "128x176:rs:ol")
    attention.flash_attn_4(q, short_kv, short_kv)
    assert calls[-1] == {}  # read when the backend is resolved, not per call
    resolve(q.device)
    attention.flash_attn_4(q, short_kv, short_kv)
    assert calls[-1]["tile_mn"] == (128, 176) and calls[-1]["num_threads"] == 384
    monkeypatch.setenv(attention.FA4_TILE_ENV, "128x170:rs")
    with pytest.raises(UserError, match=r"^flash-attn-4 tile '128x170:rs' is not of the form .*VIDPORT_FA4_TILE"):
        resolve(q.device)
    # a flash-attn-4 whose internal forward lacks the tile arguments: the public function, the library's tile
    monkeypatch.delenv(attention.FA4_TILE_ENV)
    capability["value"] = (9, 0)
    resolve(q.device)
    interface._flash_attn_fwd = lambda q, k, v, softmax_scale=None: pytest.fail("called without tile arguments")
    attention._fa4_forward_with_tiles.cache_clear()
    torch.testing.assert_close(attention.flash_attn_4(q, long_kv, long_kv), attention.sdpa_math(q, long_kv, long_kv))
    assert calls[-1] == {}
    attention._fa4_forward_with_tiles.cache_clear()


def test_flash_attn_4_is_one_clear_line_without_the_package():
    with pytest.raises(UserError, match=r"^attention backend 'flash-attn-4' cannot run on cpu; runnable here: auto,"):
        resolve_backend("flash-attn-4", "cpu")


def test_self_and_cross_attention_take_their_own_backend():
    model = WanDiT(preset("tiny"))
    model.set_attention_backend("sdpa", "sdpa-math")
    assert {b.attn.attn_op.backend for b in model.blocks} == {"sdpa"}
    assert {b.cross_attn.attn_op.backend for b in model.blocks} == {"sdpa-math"}
    model.set_attention_backend("sdpa-flash")  # one name: both
    assert {b.cross_attn.attn_op.backend for b in model.blocks} == {"sdpa-flash"}


def test_the_generator_reads_the_head_size_auto_needs(tmp_path):
    """``auto`` gets the model's head size from the repo's transformer config (Diffusers layout), or None."""
    from vidport.runtime.generator import transformer_setting

    (tmp_path / "transformer").mkdir()
    assert transformer_setting(tmp_path, "attention_head_dim") is None  # no config: the rules for any head size
    (tmp_path / "transformer" / "config.json").write_text('{"attention_head_dim": 64, "num_attention_heads": 32}')
    assert transformer_setting(tmp_path, "attention_head_dim") == 64
    assert transformer_setting(tmp_path, "num_attention_heads") == 32
    assert transformer_setting(tmp_path, "patch_size") is None
