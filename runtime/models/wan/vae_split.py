"""The Wan VAE decode split across ranks by rows, with the same result as one rank's decode.

Every rank decodes its share of the latent rows (``runtime.parallel.spatial.row_ranges``) with diffusers'
``AutoencoderKLWan.decode`` itself, while three kinds of the decoder's modules are made to see the whole frame:

- every convolution with a spatial kernel (the causal 3-D ones and the 2-D one after each 2x upsampling) first takes
  its padding's worth of rows from the neighbouring ranks (``halo``; zeros at the frame's top and bottom, as its own
  zero padding) and then convolves without padding along the rows: the same numbers as over the whole frame. A causal
  convolution's temporal cache holds this rank's rows of the input frames before it; the halo is exchanged after the
  cache is put in front, so the neighbours' cached rows come with it;
- the mid-block attention (one head over one frame's latents) attends from this rank's queries to every rank's keys
  and values (gathered in row order): the same softmax;
- everything else is per pixel (the channel RMS norms, activations, nearest-neighbour upsampling, 1x1 projections)
  or along time, so it runs on the rows as they are.

The decoded rows are gathered back in rank order, so every rank ends with the whole video. No tiles and no blending:
the split decode equals the plain one up to floating-point reassociation (a convolution library may pick another
algorithm for another row count): 1e-6 on gloo, rel L2 8.4e-6 on 2 H200s with full-fp32 convolutions. With torch's
default on CUDA (cuDNN runs fp32 convolutions in TF32) both decodes carry TF32's own error, 2e-3 from full fp32, and
differ from each other by as much (BENCHMARKS.md). The decoder's module classes are checked first
(``split_supported``): a VAE with any other module decodes plainly.
"""

from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F
from torch import nn
from vidport.runtime.parallel.spatial import gather_rows, halo, row_ranges

# the decoder's module classes whose effect on rows is known (the Wan2.1 VAE of diffusers 0.42; tests/test_vae_split.py
# checks the split against the plain decode of the installed diffusers)
_PER_PIXEL = {"WanRMS_norm", "WanUpsample", "SiLU", "Dropout", "Identity", "Sequential", "ModuleList",
              "WanResidualBlock", "WanMidBlock", "WanUpBlock", "WanResample", "WanDecoder3d"}
_PATCHED = {"WanCausalConv3d", "Conv2d", "WanAttentionBlock"}


def split_supported(vae) -> bool:
    """True when every module of ``vae.decoder`` (and its post-quant conv) is one whose rows this module handles."""
    decoder = getattr(vae, "decoder", None)
    if decoder is None or getattr(vae.config, "patch_size", None) is not None:
        return False
    mods = list(decoder.modules()) + [vae.post_quant_conv]
    return all(type(m).__name__ in _PER_PIXEL | _PATCHED for m in mods)


def _causal_conv(self, x, cache_x=None):
    """WanCausalConv3d.forward with the rows' padding taken from the neighbours."""
    pad = list(self._padding)  # (w, w, h, h, 2 * t, 0) for F.pad
    if cache_x is not None and pad[4] > 0:
        x = torch.cat([cache_x.to(x.device), x], dim=2)
        pad[4] -= cache_x.shape[2]
    if pad[2]:
        x = halo(x, pad[2], self._vidport_group, dim=-2)
        pad[2] = pad[3] = 0
    return nn.Conv3d.forward(self, F.pad(x, pad))


def _conv2d(self, x):
    """nn.Conv2d.forward (stride 1) with the rows' padding taken from the neighbours."""
    ph, pw = self.padding
    x = halo(x, ph, self._vidport_group, dim=-2)
    return F.conv2d(F.pad(x, (pw, pw, 0, 0)), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _attention(self, x):
    """WanAttentionBlock.forward with every rank's keys and values: one head over the whole frame."""
    identity = x
    b, c, t, h, w = x.shape
    x = self.norm(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
    qkv = self.to_qkv(x).reshape(b * t, 1, c * 3, h * w).permute(0, 1, 3, 2)
    q, k, v = qkv.chunk(3, dim=-1)
    rows = self._vidport_rows  # every rank's latent rows; this block may run at a multiple of them
    scale = h // rows[self._vidport_rank]
    counts = [n * scale * w for n in rows]
    k, v = (gather_rows(a, counts, self._vidport_group, dim=2) for a in (k, v))
    x = F.scaled_dot_product_attention(q, k, v)
    x = self.proj(x.squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w))
    return x.view(b, t, c, h, w).permute(0, 2, 1, 3, 4) + identity


@contextlib.contextmanager
def _rows_aware(vae, group, rows: list[int], rank: int):
    """The decoder's spatial modules exchange rows with ``group`` while the block runs (instance-level forwards,
    removed after)."""
    patched = []
    try:
        for m in vae.decoder.modules():
            name = type(m).__name__
            if name == "WanCausalConv3d" and m._padding[2] > 0:
                m.forward = types.MethodType(_causal_conv, m)
            elif name == "Conv2d" and m.padding[0] > 0:
                if m.stride != (1, 1):
                    raise ValueError(f"split decode: a strided Conv2d {m} in the decoder")
                m.forward = types.MethodType(_conv2d, m)
            elif name == "WanAttentionBlock":
                m.forward = types.MethodType(_attention, m)
                m._vidport_rows, m._vidport_rank = rows, rank
            else:
                continue
            m._vidport_group = group
            patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward, m._vidport_group
            if hasattr(m, "_vidport_rows"):
                del m._vidport_rows, m._vidport_rank


def split_decode(vae, z: torch.Tensor, group) -> torch.Tensor:
    """``vae.decode(z)`` ([B, z_dim, F, h, w] denormalized latents -> [B, 3, F', h*s, w*s] in [-1, 1]) with the latent
    rows split over the ranks of ``group``; every rank passes the same ``z`` and gets the whole video."""
    import torch.distributed as dist

    world, rank = dist.get_world_size(group), dist.get_rank(group)
    ranges = row_ranges(z.shape[-2], world)
    rows = [b - a for a, b in ranges]
    a, b = ranges[rank]
    with _rows_aware(vae, group, rows, rank):
        mine = vae.decode(z[..., a:b, :].contiguous(), return_dict=False)[0]
    scale = mine.shape[-2] // rows[rank]
    return gather_rows(mine, [n * scale for n in rows], group, dim=-2)
