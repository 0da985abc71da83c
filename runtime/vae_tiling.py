"""Spatially tiled VAE decode, optionally split across the ranks of a process group.

A video VAE's decoder is convolutional in space, so a crop of the latents decodes to (nearly) the same pixels as
the matching crop of the whole decode; decoding overlapping crops and cross-fading them bounds the decoder's
activation memory by the tile size, and lets several ranks decode different tiles at once.

Algorithm (every length in latent units unless it says pixels; ``s`` is the VAE's spatial scale):

1. **Tiles.** Along each spatial axis of length ``L``, tiles of ``tile`` latents start every ``stride`` latents:
   ``n = ceil((L - tile) / stride) + 1`` tiles (one when ``L <= tile``), the last one cut at ``L``. All but the
   last are full size, and the last is longer than the overlap ``tile - stride``, so every tile boundary has the
   same overlap. The 2-D tiles are the product of the two axes' tiles, in row-major order.
2. **Decode.** Each tile decodes with the caller's ``decode(z[..., y0:y1, x0:x1])``: all frames at once, so a causal
   video VAE keeps its own temporal cache across the tile's frames. A tile of ``h x w`` latents gives
   ``h*s x w*s`` pixels.
3. **Split (process group of world > 1).** The tiles are assigned to ranks by decreasing area, each to the rank with
   the least area so far (ties: the lower tile index, then the lower rank): deterministic, and balanced although the
   last row and column are smaller. Each rank decodes its tiles; the decoded tiles are exchanged with tensor
   collectives only (one ``all_reduce`` of the tile's channels, frames and dtype, which a rank without tiles cannot
   know, then one ``all_gather`` of every rank's tiles zero-padded to the largest tile's shape and a common slot
   count), so it works on gloo and NCCL alike and every rank ends with every tile.
4. **Blend.** Every output pixel is the weighted sum of the tiles covering it. Along each axis a tile's weight
   rises linearly over its first ``(tile - stride) * s`` pixels (unless it is the first tile) and falls over its
   last ones (unless it is the last), with ``(p + 0.5) / overlap`` at pixel ``p`` of the ramp, so the two tiles of
   an overlap cross-fade with weights summing to 1; the 2-D weight is the product of the two axes' (four tiles
   blend bilinearly in a corner). Outside the overlaps each tile keeps its stride region exactly (weight 1, no
   arithmetic). The overlap must not exceed the stride (``tile <= 2 * stride``), so no pixel lies in three tiles of
   one axis. The blend runs in tile order on every rank over the same tiles, so the result is bit-identical for any
   number of ranks.

A video that fits one tile is one tile: the plain ``decode(z)``, exactly.

Defaults (``TILE_PIXELS``, ``STRIDE_PIXELS``): 256-pixel tiles every 192 pixels (32 and 24 latents for an 8x VAE),
the tile and stride diffusers' ``AutoencoderKLWan`` uses for its own tiled decode (``tile_sample_min_height/width``
256, ``tile_sample_stride_height/width`` 192, diffusers 0.32 to 0.42): a 64-pixel (8-latent) overlap to hide the
seams, and tiles large enough that the decoder's mid-block attention (over one frame's latents) still sees a
32x32-latent neighbourhood.

When to tile (``resolve_tiling``): when one decoded frame has more pixels than ``AUTO_TILE_PIXELS`` (480x832, the
Wan2.1 1.3B release's size): a causal video decoder's peak memory is its activations for one chunk of frames at full
resolution, which grows with height x width and not with the frame count, and tiling bounds it by the tile. The rule
depends on the request alone, not on the device's free memory nor on the number of ranks, so that a request decodes
to the same frames on every GPU and on any number of GPUs (``num_gpus=4`` gives ``num_gpus=1``'s video). When the
decode is tiled on several ranks, the ranks split the tiles; ``vae_tiling=True`` asks for that at any size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from vidport.errors import UserError

TILE_PIXELS = 256  # diffusers' AutoencoderKLWan tiled-decode tile (module docstring)
STRIDE_PIXELS = 192  # ... and its stride: a 64-pixel overlap
AUTO_TILE_PIXELS = 480 * 832  # resolve_tiling: frames larger than this (e.g. 720p) decode in tiles

# the dtypes a decoded tile may have, by the code the ranks agree on (a rank without tiles cannot see one)
_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


@dataclass(frozen=True)
class Tile:
    """One crop of the latent grid, ``[y0, y1) x [x0, x1)``, at ``(row, col)`` of the tile grid."""

    index: int
    row: int
    col: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0


def default_tiling(scale: int) -> tuple[int, int]:
    """(tile, stride) in latents for a VAE of spatial ``scale``: ``TILE_PIXELS`` / ``STRIDE_PIXELS`` in latents."""
    check_positive_int("scale", scale)
    stride = max(1, round(STRIDE_PIXELS / scale))
    return max(stride + 1, round(TILE_PIXELS / scale)), stride


def check_option(option) -> None:
    """One line for a ``vae_tiling`` option that is not True, False or None (auto)."""
    if not (option is None or isinstance(option, bool)):
        raise UserError(f"vae_tiling={option!r} must be True, False or None (auto)")


def check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"VAE tiling: {name}={value!r} must be a positive integer")


def check_tiling(tile: int, stride: int) -> None:
    """One line for a tile/stride pair that cannot tile: non-positive, ``tile <= stride`` (no overlap to blend), or
    an overlap larger than the stride (a pixel in three tiles)."""
    check_positive_int("tile", tile)
    check_positive_int("stride", stride)
    if tile <= stride:
        raise UserError(f"VAE tiling: tile={tile} must be larger than stride={stride} (tiles overlap by "
                        "tile - stride latents, where they are blended)")
    if tile > 2 * stride:
        raise UserError(f"VAE tiling: the overlap tile - stride = {tile - stride} must not exceed stride={stride} "
                        f"(tile <= 2 * stride; tile={tile})")


def axis_tiles(length: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of the tiles along one axis of ``length`` latents (step 1 of the module docstring)."""
    if length <= tile:
        return [(0, length)]
    n = math.ceil((length - tile) / stride) + 1
    return [(k * stride, min(k * stride + tile, length)) for k in range(n)]


def plan_tiles(height: int, width: int, tile: int, stride: int) -> list[Tile]:
    """The tiles of a ``height x width`` latent grid, row-major."""
    check_tiling(tile, stride)
    rows, cols = axis_tiles(height, tile, stride), axis_tiles(width, tile, stride)
    return [Tile(r * len(cols) + c, r, c, y0, y1, x0, x1)
            for r, (y0, y1) in enumerate(rows) for c, (x0, x1) in enumerate(cols)]


def assign_tiles(tiles: Sequence[Tile], world: int) -> list[list[int]]:
    """Tile indices per rank: largest tiles first, each to the least-loaded rank (by latent area); each rank's list
    in tile order. The same answer on every rank."""
    check_positive_int("world", world)
    load = [0] * world
    owned: list[list[int]] = [[] for _ in range(world)]
    for t in sorted(tiles, key=lambda t: (-t.height * t.width, t.index)):
        rank = min(range(world), key=lambda r: (load[r], r))
        load[rank] += t.height * t.width
        owned[rank].append(t.index)
    return [sorted(indices) for indices in owned]


def resolve_tiling(option: bool | None, *, height: int, width: int, world: int = 1) -> bool:
    """``option`` if given; None (auto): tile when a ``height x width`` frame (pixels) is larger than
    ``AUTO_TILE_PIXELS``. ``world`` (the number of ranks) does not enter the rule, so that any number of ranks
    decodes a request to the same frames (module docstring)."""
    if option is not None:
        return bool(option)
    return height * width > AUTO_TILE_PIXELS


def tiled_decode(decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, *, scale: int,
                 tile: int | None = None, stride: int | None = None, group=None) -> torch.Tensor:
    """Decode latents ``z`` [B, C, F, h, w] in overlapping spatial tiles and blend them (module docstring).

    ``decode(z_crop)`` is the VAE's own decode of a latent crop -> pixels [B, 3, F', h*scale, w*scale].
    ``tile``/``stride``: latents (default ``default_tiling(scale)``). ``group``: a ``torch.distributed`` process
    group whose ranks all call this with the same ``z`` and share the tiles (None: this process alone; a group of
    one rank is the same). Returns the whole video [B, 3, F', h*scale, w*scale] on every rank."""
    check_positive_int("scale", scale)
    if tile is None or stride is None:
        default_tile, default_stride = default_tiling(scale)
        tile = default_tile if tile is None else tile
        stride = default_stride if stride is None else stride
    if z.dim() != 5:
        raise ValueError(f"tiled_decode expects latents [B, C, F, h, w], got shape {tuple(z.shape)}")
    tiles = plan_tiles(z.shape[-2], z.shape[-1], tile, stride)
    if len(tiles) == 1:
        return decode(z)
    world, rank = _world_and_rank(group)
    owners = assign_tiles(tiles, world)
    mine = {i: _decode_tile(decode, z, tiles[i], scale) for i in owners[rank]}
    decoded = [mine[t.index] for t in tiles] if world == 1 else _exchange(mine, tiles, owners, rank, group, z, scale)
    return blend(decoded, tiles, scale=scale, overlap=(tile - stride) * scale)


def blend(decoded: Sequence[torch.Tensor], tiles: Sequence[Tile], *, scale: int, overlap: int) -> torch.Tensor:
    """The decoded tiles [B, C, F', h*scale, w*scale] (in ``tiles``' order) cross-faded into one video."""
    first = decoded[0]
    n_rows, n_cols = tiles[-1].row + 1, tiles[-1].col + 1
    height, width = tiles[-1].y1 * scale, tiles[-1].x1 * scale
    out = first.new_zeros((*first.shape[:-2], height, width))
    for t, pixels in zip(tiles, decoded):
        weight = _ramp(pixels.shape[-2], overlap, t.row > 0, t.row < n_rows - 1, pixels)[:, None] * \
            _ramp(pixels.shape[-1], overlap, t.col > 0, t.col < n_cols - 1, pixels)[None, :]
        # weight 1 outside the overlaps: 0 + 1 * x keeps the tile's own pixels exactly
        out[..., t.y0 * scale:t.y1 * scale, t.x0 * scale:t.x1 * scale].add_(pixels * weight)
    return out


def _ramp(size: int, overlap: int, rises: bool, falls: bool, like: torch.Tensor) -> torch.Tensor:
    """A tile's weights along one axis (``size`` pixels): ``(p + 0.5) / overlap`` over the first ``overlap`` pixels if
    ``rises``, its mirror over the last ones if ``falls``, 1 elsewhere."""
    w = torch.ones(size, dtype=like.dtype, device=like.device)
    up = (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap
    if rises:
        w[:overlap] = up.to(w)
    if falls:
        w[size - overlap:] = up.flip(0).to(w)
    return w


def _world_and_rank(group) -> tuple[int, int]:
    if group is None:
        return 1, 0
    import torch.distributed as dist

    return dist.get_world_size(group), dist.get_rank(group)


def _decode_tile(decode, z: torch.Tensor, t: Tile, scale: int) -> torch.Tensor:
    pixels = decode(z[..., t.y0:t.y1, t.x0:t.x1])
    want = (t.height * scale, t.width * scale)
    if pixels.dim() != 5 or tuple(pixels.shape[-2:]) != want:
        raise ValueError(f"tiled_decode: decoding a {t.height}x{t.width}-latent tile gave shape {tuple(pixels.shape)}, "
                         f"expected [B, C, F, {want[0]}, {want[1]}] (is scale={scale} the VAE's spatial factor?)")
    return pixels


def _exchange(mine: dict[int, torch.Tensor], tiles: Sequence[Tile], owners: list[list[int]], rank: int, group,
              z: torch.Tensor, scale: int) -> list[torch.Tensor]:
    """Every rank's decoded tiles on every rank (step 3 of the module docstring), in ``tiles``' order."""
    import torch.distributed as dist

    # channels, frames and dtype of a decoded tile: a rank that decoded none learns them here
    meta = torch.zeros(3, dtype=torch.int64, device=z.device)
    if mine:
        sample = next(iter(mine.values()))
        if sample.dtype not in _DTYPES:
            raise ValueError(f"tiled_decode: decoded tiles of dtype {sample.dtype} cannot be exchanged")
        meta = torch.tensor([sample.shape[1], sample.shape[2], _DTYPES.index(sample.dtype)], device=z.device)
    dist.all_reduce(meta, op=dist.ReduceOp.MAX, group=group)
    channels, frames, code = meta.tolist()
    slots = max(len(indices) for indices in owners)
    shape = (z.shape[0], channels, frames, max(t.height for t in tiles) * scale, max(t.width for t in tiles) * scale)
    send = torch.zeros((slots, *shape), dtype=_DTYPES[code], device=z.device)
    for slot, i in enumerate(owners[rank]):
        send[slot, ..., :tiles[i].height * scale, :tiles[i].width * scale] = mine[i]
    received = [torch.empty_like(send) for _ in owners]
    dist.all_gather(received, send, group=group)
    decoded: list[torch.Tensor | None] = [None] * len(tiles)
    for r, indices in enumerate(owners):
        for slot, i in enumerate(indices):
            decoded[i] = received[r][slot, ..., :tiles[i].height * scale, :tiles[i].width * scale]
    return decoded
