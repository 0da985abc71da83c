"""Native Wan DiT vs diffusers WanTransformer3DModel (the external reference), and real-size key sets."""

from __future__ import annotations

import pytest
import torch
from vidport.porting.namemap import NameMap
from vidport.porting.sources import KeysFileSource, ModuleSource, TensorDictSource
from vidport.runtime.loading import StrictLoadError, load_into
from vidport.runtime.models.wan import family
from vidport.runtime.models.wan.config import preset
from vidport.runtime.models.wan.model import WanDiT

DIFFUSERS_MAP = NameMap.load(family.DIFFUSERS_TO_NATIVE)


def diffusers_reference(cfg, seed=0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    ref = WanTransformer3DModel(**{k: v for k, v in cfg.to_diffusers().items() if not k.startswith("_")})
    # default init leaves modulation tables at zero-ish values; randomize everything so no path hides
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.dim() > 1 else 0.1) / max(1, p.shape[-1]) ** 0.5
                    + (1.0 if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") else 0.0))
    return ref.eval()


def native_from(ref, cfg):
    with torch.device("meta"):
        model = WanDiT(cfg)
    load_into(model, ModuleSource(ref, "diffusers"), DIFFUSERS_MAP)
    return model.eval()


def test_tiny_native_matches_diffusers_fp32():
    cfg = preset("tiny")
    ref = diffusers_reference(cfg)
    model = native_from(ref, cfg)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 3, 12, 20, generator=g)  # F=3, H=6, W=10 tokens: non-square grid
    t = torch.tensor([999.0, 321.0])
    # the pipeline hands diffusers a context already zero-padded to text_len; ours pads itself
    ctx = torch.randn(2, 7, cfg.text_dim, generator=g)
    ctx_padded = torch.nn.functional.pad(ctx, (0, 0, 0, cfg.text_len - 7))
    with torch.no_grad():
        want = ref(x, t, ctx_padded, return_dict=False)[0]
        got = model(x, t, ctx)
    assert got.shape == want.shape == x.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=lambda m: f"native WanDiT vs diffusers: {m}")


def test_unpadded_context_would_change_output():
    """The padding pitfall is real: diffusers with an unpadded context gives a different answer."""
    cfg = preset("tiny")
    ref = diffusers_reference(cfg)
    model = native_from(ref, cfg)
    x, t, ctx = torch.randn(1, 16, 1, 4, 4), torch.tensor([500.0]), torch.randn(1, 5, cfg.text_dim)
    with torch.no_grad():
        unpadded = ref(x, t, ctx, return_dict=False)[0]
        ours = model(x, t, ctx)
    assert (unpadded - ours).abs().max() > 1e-4


@pytest.mark.parametrize("size,count", [("1.3b", 825), ("14b", 1095)])
def test_real_size_diffusers_keys_map_one_to_one(size, count):
    keys = KeysFileSource(family.REFERENCE_KEYS / f"diffusers_dit_{size}_keys.txt")
    assert len(keys) == count
    with torch.device("meta"):
        model = WanDiT(preset(size))
    native = ModuleSource(model, f"native {size}")
    plan = DIFFUSERS_MAP.plan(keys.keys())
    plan.verify(keys.shapes(), native.shapes(), what="native")
    assert sum(len(op.sources) for op in plan.ops) == count  # every diffusers tensor used once
    assert not plan.dropped


def test_strict_load_lists_every_problem():
    cfg = preset("tiny")
    ref = diffusers_reference(cfg)
    sd = dict(ref.state_dict())
    sd.pop("blocks.1.attn2.norm_k.weight")
    sd["blocks.0.ffn.net.2.bias"] = torch.zeros(3)
    sd["extra.weight"] = torch.zeros(1)

    src = TensorDictSource(sd, "edited diffusers state dict")
    with torch.device("meta"):
        model = WanDiT(cfg)
    with pytest.raises(StrictLoadError) as err:
        load_into(model, src, DIFFUSERS_MAP)
    msg = str(err.value)
    assert "blocks.1.cross_attn.norm_k.weight" in msg
    assert "blocks.0.ffn.fc2.bias" in msg and "[3]" in msg
    assert "extra.weight" in msg
