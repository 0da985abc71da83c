"""The tiled VAE decode (runtime/vae_tiling.py) on the tiny Wan VAE (diffusers' AutoencoderKLWan, seeded random
weights): one tile is the plain decode exactly; several tiles of a spatially pointwise decoder equal the plain decode
within fp32 rounding (the tiling and blending add no error of their own); 2 and 3 gloo ranks give the same bits as
one; a whole tiny generation on 2 ranks equals one rank; bad values and a family that cannot tile fail in one line.

Why the multi-tile comparison uses a pointwise decoder: the tiny VAE's 3x3 kernels give its decoder a receptive field
of about +-16 latents, wider than these tiles, and random weights do not damp it as trained ones do, so the tiled
decode of the unmodified VAE differs from the plain one by what its tile borders see (measured on these weights: rel
L2 0.24 for 4-latent tiles on 6x8 latents, 0.048 for 16-latent tiles on 24x24, 0.020 for the default 32-latent tiles
on 40x40): a property of the weights, not of the tiling.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from vidport.runtime import vae_tiling
from vidport.runtime.models.wan import family
from vidport.runtime.vae_tiling import assign_tiles, plan_tiles, tiled_decode

from vidport.errors import UserError

SCALE = 8  # the Wan VAE's spatial factor
POINTWISE_ATOL = 1e-5  # fp32: tiled vs plain decode of the pointwise VAE (measured 7.5e-8)


def make_vae(seed: int = 0):
    """The tiny Wan VAE with every tensor seeded-random (biases and norm scales too, so no path is trivial)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**family.vae_config("tiny")).eval()
    with torch.no_grad():
        for p in vae.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return vae


def make_pointwise(vae):
    """A copy whose decode is spatially pointwise: every conv keeps only its centre spatial tap (its causal time taps
    stay) and the mid-block attention's output projection is zero (the block becomes its residual). A crop of the
    latents then decodes to exactly the matching crop of the video, up to fp32 rounding."""
    vae = copy.deepcopy(vae)
    with torch.no_grad():
        for module in vae.decoder.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)) and module.kernel_size[-1] > 1:
                kh, kw = module.kernel_size[-2:]
                centre = torch.zeros(kh, kw)
                centre[kh // 2, kw // 2] = 1
                module.weight.mul_(centre)
        for attn in vae.decoder.mid_block.attentions:
            attn.proj.weight.zero_()
            attn.proj.bias.zero_()
    return vae


def decoder(vae):
    return lambda z: vae.decode(z, return_dict=False)[0]


def latents(h: int, w: int, frames: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 16, frames, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vae():
    return make_vae()


# --- (a) one rank vs the plain decode ---------------------------------------------------------------
def test_a_video_that_fits_one_tile_is_the_plain_decode(vae):
    z = latents(6, 8)
    with torch.no_grad():
        plain = decoder(vae)(z)
        for tile, stride in ((8, 6), (32, 24), (None, None)):  # None: the 256/192-pixel defaults
            assert torch.equal(tiled_decode(decoder(vae), z, scale=SCALE, tile=tile, stride=stride), plain)


@pytest.mark.parametrize("h, w, tile, stride", [(6, 8, 4, 3), (5, 7, 4, 2), (7, 4, 3, 2)])
def test_tiles_of_a_pointwise_decoder_equal_the_plain_decode(vae, h, w, tile, stride):
    pointwise = make_pointwise(vae)
    z = latents(h, w)
    assert len(plan_tiles(h, w, tile, stride)) > 2  # several tiles, overlapping in both axes where there are two
    with torch.no_grad():
        plain = decoder(pointwise)(z)
        tiled = tiled_decode(decoder(pointwise), z, scale=SCALE, tile=tile, stride=stride)
        full = decoder(vae)(z)
    assert tiled.shape == plain.shape == (1, 3, 9, h * SCALE, w * SCALE)
    torch.testing.assert_close(tiled, plain, rtol=0, atol=POINTWISE_ATOL)
    assert (plain - full).abs().max() > 0.1  # the pointwise decoder is not the unmodified one


def test_outside_the_overlaps_a_tile_keeps_its_own_pixels(vae):
    """The unmodified VAE, 6 tiles: where one tile alone covers a pixel, the output is that tile's decode exactly."""
    z = latents(6, 8)
    dec = decoder(vae)
    with torch.no_grad():
        tiled = tiled_decode(dec, z, scale=SCALE, tile=4, stride=3)
        first = dec(z[..., :4, :4])  # tile 0: overlaps its neighbours over latents 3..4 -> pixels 24..32
        last = dec(z[..., 3:6, 6:8])  # tile 5 (the corner): its own region starts after the overlap, at pixel 8
    assert torch.equal(tiled[..., :24, :24], first[..., :24, :24])
    assert torch.equal(tiled[..., 4 * SCALE:, 7 * SCALE:], last[..., SCALE:, SCALE:])
    assert tiled.abs().max() <= 1  # a blend of clamped tiles stays in range


def test_tile_plan_and_balanced_assignment():
    tiles = plan_tiles(60, 104, 32, 24)  # Wan 1.3B at 480x832 with the default 256/192-pixel tiles
    assert [(t.y0, t.y1) for t in tiles[::4]] == [(0, 32), (24, 56), (48, 60)]
    assert [(t.x0, t.x1) for t in tiles[:4]] == [(0, 32), (24, 56), (48, 80), (72, 104)]
    assert vae_tiling.default_tiling(SCALE) == (32, 24)
    owners = assign_tiles(tiles, 4)
    assert sorted(i for o in owners for i in o) == list(range(12))
    loads = [sum(tiles[i].height * tiles[i].width for i in o) for o in owners]
    assert max(loads) - min(loads) <= 0 and owners == assign_tiles(tiles, 4)  # 2 full + 1 short tile each
    assert assign_tiles(plan_tiles(4, 6, 4, 3), 3)[2] == []  # 2 tiles, 3 ranks: one rank decodes nothing
    assert len(plan_tiles(56, 56, 32, 24)) == 4  # no tile lies wholly inside its neighbour's overlap


def test_auto_tiling():
    assert not vae_tiling.resolve_tiling(None, height=480, width=832)
    assert vae_tiling.resolve_tiling(None, height=720, width=1280)
    # the number of ranks does not change the rule: N GPUs decode a request to 1 GPU's frames
    assert not vae_tiling.resolve_tiling(None, height=480, width=832, world=4)
    assert vae_tiling.resolve_tiling(None, height=720, width=1280, world=4)
    assert not vae_tiling.resolve_tiling(False, height=720, width=1280, world=4)
    assert vae_tiling.resolve_tiling(True, height=32, width=48)


# --- (b) 2 and 3 ranks give the bits of one -----------------------------------------------------------
def _decode_on_ranks(worker, state_dict, z, tile, stride):
    """The tiled decode shared by the ranks, and this rank's own single-process tiled decode (the same thread count:
    CPU convolutions round differently with another one); whether every rank got the single-process bits."""
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan(**family.vae_config("tiny")).eval()
    vae.load_state_dict(state_dict)
    with torch.no_grad():
        shared = tiled_decode(decoder(vae), z, scale=SCALE, tile=tile, stride=stride, group=dist.group.WORLD)
        alone = tiled_decode(decoder(vae), z, scale=SCALE, tile=tile, stride=stride)
    same = torch.tensor([int(torch.equal(shared, alone))])
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    return shared, alone, bool(same.item())


@pytest.mark.parametrize("h, w", [(6, 8), (4, 6)])  # 6 tiles; 2 tiles (on 3 ranks one decodes none)
@pytest.mark.parametrize("pool", ["pool2", "pool3"])
def test_ranks_give_the_bits_of_one_rank(vae, request, pool, h, w):
    z = latents(h, w)
    shared, alone, every_rank_same = request.getfixturevalue(pool).run(_decode_on_ranks, vae.state_dict(), z, 4, 3)
    assert every_rank_same and torch.equal(shared, alone)
    with torch.no_grad():
        here = tiled_decode(decoder(vae), z, scale=SCALE, tile=4, stride=3)
    torch.testing.assert_close(shared, here, rtol=0, atol=1e-5)  # this process runs other thread counts


# --- (c) a whole generation -------------------------------------------------------------------------
def test_tiled_generation_on_two_ranks_equals_one(converted_tiny_release):
    from vidport.runtime import VideoGenerator

    options = dict(attention_backend="sdpa-math", dtype="fp32", device="cpu", vae_tiling=True)
    # 272x272: latents 34x34, two 32-latent tiles (stride 24) per axis with the default tiling
    request = dict(num_frames=5, height=272, width=272, num_inference_steps=2, guidance_scale=5.0, seed=3)
    one = VideoGenerator.from_pretrained(converted_tiny_release, **options)
    want = one.generate_video("a red fox in the snow", **request)
    assert one.last_report.settings["vae_tiling"] is True and one.last_report.settings["vae_tiles"] == 4
    with VideoGenerator.from_pretrained(converted_tiny_release, num_gpus=2, **options) as gen:
        got = gen.generate_video("a red fox in the snow", **request)
        settings = gen.last_report.settings
    assert settings["vae_tiling"] is True and settings["vae_tiles"] == 4 and settings["num_gpus"] == 2
    assert got.shape == want.shape == (5, 272, 272, 3)
    assert (got == want).all(), f"frames differ: max abs {abs(got.astype(int) - want).max()}"
    plain = VideoGenerator.from_pretrained(converted_tiny_release, **{**options, "vae_tiling": False})
    plain.generate_video("a red fox in the snow", **request)
    assert plain.last_report.settings["vae_tiling"] is False and "vae_tiles" not in plain.last_report.settings


# --- (d) bad values, (e) a family that cannot tile ------------------------------------------------------
@pytest.mark.parametrize("tile, stride, needle", [
    (3, 3, "tile=3 must be larger than stride=3"),
    (2, 4, "tile=2 must be larger than stride=4"),
    (0, 3, "tile=0 must be a positive integer"),
    (4, -1, "stride=-1 must be a positive integer"),
    (True, 1, "tile=True must be a positive integer"),
    (7, 3, "the overlap tile - stride = 4 must not exceed stride=3"),
])
def test_bad_tiles_are_one_line(vae, tile, stride, needle):
    with pytest.raises(UserError) as info:
        tiled_decode(decoder(vae), latents(6, 8), scale=SCALE, tile=tile, stride=stride)
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("value", ["yes", 1])
def test_bad_option_is_one_line(converted_tiny_release, value):
    from vidport.runtime import VideoGenerator

    with pytest.raises(UserError) as info:
        VideoGenerator.from_pretrained(converted_tiny_release, device="cpu", vae_tiling=value)
    assert str(info.value) == f"vae_tiling={value!r} must be True, False or None (auto)"


@pytest.fixture(scope="module")
def ltx_repo(converted_ltx_release):
    return converted_ltx_release


@pytest.mark.parametrize("num_gpus", [1, 2])
def test_a_family_that_cannot_tile_refuses_in_one_line(ltx_repo, num_gpus):
    from vidport.runtime import VideoGenerator

    from benchmarks.common import worker_pids

    before = worker_pids()
    with pytest.raises(UserError) as info:
        VideoGenerator.from_pretrained(ltx_repo, device="cpu", num_gpus=num_gpus, vae_tiling=True)
    message = str(info.value)
    assert message.startswith("vae_tiling=True is not supported by ltx-video: ") and "\n" not in message
    assert worker_pids() == before  # refused before any rank started


def test_cli_flag_reaches_the_report(converted_tiny_release, tmp_path, monkeypatch, capsys):
    import json

    from vidport.porting.cli import main

    monkeypatch.setenv("VIDPORT_ATTENTION_BACKEND", "sdpa-math")
    args = ["generate", str(converted_tiny_release), "--prompt", "a cat", "--steps", "1", "--guidance", "1",
            "--height", "272", "--width", "208", "--no-progress"]
    main([*args, "-o", str(tmp_path / "a.mp4"), "--vae-tiling", "--json"])
    settings = json.loads(capsys.readouterr().out)["settings"]
    assert settings["vae_tiling"] is True and settings["vae_tiles"] == 2
    main([*args, "-o", str(tmp_path / "b.mp4"), "--no-vae-tiling", "--json"])
    assert json.loads(capsys.readouterr().out)["settings"]["vae_tiling"] is False
    main([*args, "-o", str(tmp_path / "c.mp4")])
    assert "VAE decoded in" not in capsys.readouterr().out  # auto: 272x208 on one GPU is not tiled
