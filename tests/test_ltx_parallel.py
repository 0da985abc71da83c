"""Sequence-parallel (Ulysses) and CFG-parallel LTX-Video DiT on gloo ranks against the single-process model with
the same weights (through the family's parallel plan: no LTX code in runtime/parallel/), and a whole tiny LTX
generation on 2 ranks equal to 1."""

from __future__ import annotations

import pytest
import torch
from vidport.runtime.models.ltx_video.config import preset
from vidport.runtime.models.ltx_video.model import LTXDiT
from vidport.runtime.models.ltx_video.parallel import parallelize_ltx
from vidport.runtime.parallel import parallelize

TINY = preset("tiny")  # 4 heads: 1, 2 or 4 ranks
TINY6 = TINY.replace(num_attention_heads=6, attention_head_dim=8)  # 6 heads: 3 ranks
ATOL = 1e-5  # fp32
SCALE = (8 / 25, 32, 32)  # LTXPipeline's rope_interpolation_scale at 25 fps


def make_dit(cfg, seed=0) -> LTXDiT:
    torch.manual_seed(seed)
    model = LTXDiT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def make_cases(cfg) -> dict[str, tuple]:
    g = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1] * 6, [1] * 2 + [0] * 4])
    return {
        # grid 2x2x3 = 12 tokens: divisible by 2 and 3
        "even": (torch.randn(1, 12, cfg.in_channels, generator=g), torch.randn(1, 6, cfg.caption_channels,
                                                                               generator=g),
                 torch.tensor([700.0]), mask[:1], dict(num_frames=2, height=2, width=3)),
        # grid 1x5x5 = 25 tokens: not divisible by 2 or 3 (padded shards); batch 2, two timesteps, two text lengths
        "uneven": (torch.randn(2, 25, cfg.in_channels, generator=g), torch.randn(2, 6, cfg.caption_channels,
                                                                                generator=g),
                   torch.tensor([999.0, 40.0]), mask, dict(num_frames=1, height=5, width=5)),
    }


def run_cases(dit, cases):
    with torch.no_grad():
        return {name: dit(x, text, t, mask, **grid, rope_interpolation_scale=SCALE)
                for name, (x, text, t, mask, grid) in cases.items()}


def _sequence_parallel(worker, cfg, state_dict, cases):
    model = LTXDiT(cfg).eval()
    model.load_state_dict(state_dict)
    model.set_attention_backend("sdpa-math")
    return run_cases(parallelize_ltx(model), cases)


def _cfg_parallel(worker, cfg, state_dict, case):
    model = LTXDiT(cfg).eval()
    model.load_state_dict(state_dict)
    dit, strategy = parallelize(model, parallelize_ltx, cfg_parallel=True)
    x, text, t, mask, grid = case
    kw = dict(encoder_attention_mask=mask, **grid, rope_interpolation_scale=SCALE)

    class Branch:
        def __init__(self, text):
            self.kwargs = {"encoder_hidden_states": text, **kw}

    def model_fn(x, timestep, **k):
        return dit(x, timestep=timestep, **k)

    with torch.no_grad():
        return strategy(model_fn, x, t, Branch(text), Branch(torch.zeros_like(text)), 3.0)


def reference(cfg):
    model = make_dit(cfg)
    cases = make_cases(cfg)
    return model, cases, run_cases(model, cases)


def assert_same(got, want, what):
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL, msg=lambda m: f"{what} vs single process: {m}")


def test_two_ranks_equal_one_process(pool2):
    model, cases, want = reference(TINY)
    got = pool2.run(_sequence_parallel, TINY, model.state_dict(), cases)
    for name in cases:
        assert_same(got[name], want[name], f"2 ranks ({name})")


def test_three_ranks_equal_one_process(pool3):
    model, cases, want = reference(TINY6)
    got = pool3.run(_sequence_parallel, TINY6, model.state_dict(), cases)
    for name in cases:
        assert_same(got[name], want[name], f"3 ranks ({name})")


def test_cfg_parallel_equals_serial_guidance(pool2):
    model, cases, _ = reference(TINY)
    x, text, t, mask, grid = cases["uneven"]
    kw = dict(**grid, rope_interpolation_scale=SCALE)
    with torch.no_grad():
        cond = model(x, text, t, mask, **kw)
        uncond = model(x, torch.zeros_like(text), t, mask, **kw)
    want = uncond + 3.0 * (cond - uncond)
    got = pool2.run(_cfg_parallel, TINY, model.state_dict(), cases["uneven"])
    assert_same(got, want, "CFG-parallel on 2 ranks")


@pytest.fixture(scope="module")
def ltx_repo(converted_ltx_release):
    return converted_ltx_release


def test_generation_on_two_ranks_equals_one(ltx_repo):
    from vidport.runtime import VideoGenerator

    options = dict(attention_backend="sdpa-math", dtype="fp32", device="cpu")
    request = dict(num_frames=9, height=64, width=96, num_inference_steps=3, guidance_scale=3.0, seed=3)
    # one process: the family's default (batched CFG) and serial CFG, which is what CFG-parallel ranks compute
    want = {cfg: VideoGenerator.from_pretrained(ltx_repo, cfg=cfg, **options).generate_video("a red fox in the snow",
                                                                                             **request)
            for cfg in ("batched", "serial")}
    for extra, same_as in (({}, "batched"), ({"cfg_parallel": True}, "serial")):
        with VideoGenerator.from_pretrained(ltx_repo, num_gpus=2, **options, **extra) as gen:
            got = gen.generate_video("a red fox in the snow", **request)
        ref = want[same_as]
        assert got.shape == ref.shape == (9, 64, 96, 3)
        assert (got == ref).all(), f"{extra}: frames differ, max abs {abs(got.astype(int) - ref).max()}"
