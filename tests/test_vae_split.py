"""The Wan VAE decode split across ranks by rows (runtime/models/wan/vae_split.py), on the tiny Wan VAE (diffusers'
AutoencoderKLWan, seeded random weights): 2 and 3 gloo ranks give the plain single-process decode, within fp32
reassociation, including uneven row counts and a latent height the ranks split one row apart; the halo helpers on
their own; what the split refuses.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from vidport.runtime.models.wan import vae_split
from vidport.runtime.parallel.spatial import gather_rows, halo, row_ranges

from tests.test_vae_tiling import decoder, latents, make_vae
from vidport.errors import UserError

ATOL = 2e-5  # fp32; the split changes which rows a convolution call sees, not what it sums


@pytest.fixture(scope="module")
def vae():
    return make_vae()


def test_row_ranges():
    assert row_ranges(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert row_ranges(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    with pytest.raises(UserError, match="cannot split 3 rows over 4 ranks"):
        row_ranges(3, 4)


def _halo_and_gather(worker, x):
    world, rank = dist.get_world_size(), dist.get_rank()
    ranges = row_ranges(x.shape[-2], world)
    a, b = ranges[rank]
    mine = x[..., a:b, :]
    ext = halo(mine, 2, dist.group.WORLD)
    padded = torch.nn.functional.pad(x, (0, 0, 2, 2))
    back = gather_rows(mine, [e - s for s, e in ranges], dist.group.WORLD)
    ok = torch.tensor([int(torch.equal(ext, padded[..., a:b + 4, :])), int(torch.equal(back, x))])
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)  # every rank's
    return [bool(v) for v in ok]


@pytest.mark.parametrize("pool", ["pool2", "pool3"])
def test_halo_rows_are_the_neighbours_and_zeros_at_the_edges(request, pool):
    x = torch.arange(2 * 11 * 5, dtype=torch.float32).reshape(1, 2, 11, 5)
    assert request.getfixturevalue(pool).run(_halo_and_gather, x) == [True, True]


def _split_on_ranks(worker, state_dict, z):
    from diffusers import AutoencoderKLWan
    from vidport.runtime.models.wan import family

    model = AutoencoderKLWan(**family.vae_config("tiny")).eval()
    model.load_state_dict(state_dict)
    with torch.no_grad():
        out = vae_split.split_decode(model, z, dist.group.WORLD)
        plain = decoder(model)(z)  # the same process, after the split: the forwards are its own again
    worst = (out - plain).abs().max().reshape(1)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)  # every rank has the whole video
    return out, plain, float(worst)


@pytest.mark.parametrize("h, w", [(6, 8), (7, 5), (3, 4)])  # even, uneven rows; 3 rows on 3 ranks: one each
@pytest.mark.parametrize("pool", ["pool2", "pool3"])
def test_split_decode_is_the_plain_decode(vae, request, pool, h, w):
    z = latents(h, w)
    out, plain, worst = request.getfixturevalue(pool).run(_split_on_ranks, vae.state_dict(), z)
    with torch.no_grad():
        want = decoder(vae)(z)
    assert out.shape == want.shape == (1, 3, 9, h * 8, w * 8)
    assert worst <= ATOL  # every rank's video against its own process's plain decode
    torch.testing.assert_close(out, want, rtol=0, atol=ATOL)


def test_split_supported(vae):
    assert vae_split.split_supported(vae)
    import copy

    other = copy.deepcopy(vae)
    other.decoder.mid_block.attentions[0].add_module("extra", torch.nn.Conv1d(1, 1, 3))
    assert not vae_split.split_supported(other)  # an unknown module: the decode stays plain
