"""Row-split tensors across the ranks of a process group: the partition, the halo exchange a convolution needs at
the cut, and the gather that puts the rows back together.

A convolution over rows that are split across ranks gives exactly the whole tensor's result when each rank first
extends its rows by the ``p`` rows just above and below it (its neighbours' edge rows; zeros beyond the first and
the last rank, as the convolution's own zero padding) and then convolves without padding along that axis. These
helpers use tensor collectives only (``all_gather``), so they run on gloo and NCCL alike.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from vidport.errors import UserError


def row_ranges(rows: int, world: int) -> list[tuple[int, int]]:
    """``world`` contiguous ranges covering ``rows``, sizes differing by at most one (the larger first)."""
    if rows < world:
        raise UserError(f"cannot split {rows} rows over {world} ranks: every rank needs at least one row; "
                        f"use fewer GPUs or a larger frame")
    base, extra = divmod(rows, world)
    out, start = [], 0
    for r in range(world):
        n = base + (r < extra)
        out.append((start, start + n))
        start += n
    return out


def _world_rank(group) -> tuple[int, int]:
    return dist.get_world_size(group), dist.get_rank(group)


def halo(x: torch.Tensor, p: int, group, dim: int = -2) -> torch.Tensor:
    """``x`` (this rank's rows along ``dim``) extended by ``p`` rows of each neighbour: the rows just above it (zeros
    on the first rank) and just below it (zeros on the last). Every rank must hold at least ``p`` rows."""
    world, rank = _world_rank(group)
    if p == 0 or world == 1:
        pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [p, p]
        return torch.nn.functional.pad(x, pad) if p else x
    n = x.shape[dim]
    if n < p:
        raise UserError(f"rank {rank} holds {n} rows, fewer than the {p} a convolution needs from it at the cut; "
                        f"use fewer GPUs or a larger frame")
    edges = torch.cat([x.narrow(dim, 0, p), x.narrow(dim, n - p, p)], dim).contiguous()
    gathered = [torch.empty_like(edges) for _ in range(world)]
    dist.all_gather(gathered, edges, group=group)
    zeros = torch.zeros_like(edges.narrow(dim, 0, p))
    above = gathered[rank - 1].narrow(dim, p, p) if rank > 0 else zeros
    below = gathered[rank + 1].narrow(dim, 0, p) if rank < world - 1 else zeros
    return torch.cat([above, x, below], dim)


def gather_rows(x: torch.Tensor, counts: list[int], group, dim: int = -2) -> torch.Tensor:
    """Every rank's rows along ``dim`` (rank r holds ``counts[r]`` of them), concatenated in rank order, on every
    rank. Uneven counts are padded to the largest for the collective and cut back after."""
    world, rank = _world_rank(group)
    if world == 1:
        return x
    if x.shape[dim] != counts[rank]:
        raise ValueError(f"rank {rank} holds {x.shape[dim]} rows, the split says {counts[rank]}")
    most = max(counts)
    if x.shape[dim] < most:
        shape = list(x.shape)
        shape[dim] = most - x.shape[dim]
        x = torch.cat([x, x.new_zeros(shape)], dim)
    gathered = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(gathered, x.contiguous(), group=group)
    return torch.cat([g.narrow(dim, 0, c) for g, c in zip(gathered, counts)], dim)
