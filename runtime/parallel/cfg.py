"""CFG parallelism: the conditional and unconditional branches on two halves of the ranks.

With ``2N`` ranks, ranks ``0..N-1`` run the conditional branch and ranks ``N..2N-1`` the unconditional
one (each half sequence-parallel over its ``N`` ranks); rank ``i`` and rank ``N + i`` then exchange
their predictions and both apply the guidance, so every rank holds the same guided prediction and
steps the scheduler identically. One DiT forward per step per rank instead of two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from vidport.runtime.pipeline.guidance import combine

from vidport.errors import UserError


@dataclass(frozen=True)
class CFGSplit:
    """This rank's place in a CFG-parallel layout."""

    branch: int  # 0: conditional, 1: unconditional
    branch_group: dist.ProcessGroup  # the ranks running the same branch (sequence parallel among them)
    pair_group: dist.ProcessGroup  # this rank and its counterpart in the other branch


def split_for_cfg(group: dist.ProcessGroup | None = None) -> CFGSplit:
    """Create the branch and pair groups over ``group`` (every rank of it must call this, in step)."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if world < 2 or world % 2:
        raise UserError(f"CFG parallelism needs an even number of ranks (2, 4, ...), got {world}")
    ranks = dist.get_process_group_ranks(group) if group is not None else list(range(world))
    half = world // 2
    # new_group is collective: every rank creates every group, in the same order
    branches = [dist.new_group(ranks[:half]), dist.new_group(ranks[half:])]
    pairs = [dist.new_group([ranks[i], ranks[half + i]]) for i in range(half)]
    return CFGSplit(branch=rank // half, branch_group=branches[rank // half], pair_group=pairs[rank % half])


class ParallelCFG:
    """A CFG strategy (see ``runtime.pipeline.guidance``): each rank runs its branch, pairs exchange."""

    name = "parallel"
    joins_branches = False  # each rank runs one branch

    def __init__(self, split: CFGSplit):
        self.split = split

    def __call__(self, model, x, timestep, cond, uncond, guidance_scale):
        if uncond is None:  # guidance off: both halves run the conditional branch
            return model(x, timestep, **cond.kwargs).float()
        pred = model(x, timestep, **(cond if self.split.branch == 0 else uncond).kwargs).float().contiguous()
        # pair-group rank 0 is the conditional rank (groups keep the global rank order)
        preds = [torch.empty_like(pred) for _ in range(2)]
        dist.all_gather(preds, pred, group=self.split.pair_group)
        return combine(preds[0], preds[1], guidance_scale)
