"""Parallelism applied from outside the models: Ulysses sequence parallelism, ring attention and Ulysses x
ring (``ring``), CFG parallelism, and the launcher that starts the ranks.

``parallelize(model, plan, cfg_parallel=...)`` is what a rank's generation code calls after loading the
model, with the family's parallel plan (``FamilySpec.parallel_plan``: which attention is full-sequence
and gets Ulysses, how the tokens are sharded): it returns the module to call as
``forward(x, timestep, **cond.kwargs)`` and, with CFG parallelism, the CFG strategy to use (``None``: keep
the serial or batched one).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.distributed as dist
from torch import nn
from vidport.runtime.parallel.cfg import CFGSplit, ParallelCFG, split_for_cfg
from vidport.runtime.parallel.launch import Worker, WorkerError, WorkerPool, launch, under_torchrun
from vidport.runtime.parallel.ring import (
    RingAttention,
    UlyssesRingAttention,
    hybrid_attention_op,
    hybrid_groups,
    replace_sequence_attention,
    ring_attention_op,
)
from vidport.runtime.parallel.ulysses import DistributedAttention, check_heads, heads_to_seq, seq_to_heads, shard_bounds

# plan(model, group) -> the sequence-parallel module (a family's FamilySpec.parallel_plan)
ParallelPlan = Callable[[nn.Module, "dist.ProcessGroup | None"], nn.Module]


def parallelize(model, plan: ParallelPlan, *, cfg_parallel: bool = False,
                group: dist.ProcessGroup | None = None) -> tuple[nn.Module, ParallelCFG | None]:
    """Spread ``model`` over the ranks of ``group`` (default: all of them).

    Without ``cfg_parallel`` every rank shares the sequence. With it, half the ranks run the conditional
    branch and half the unconditional one, each half sharing the sequence (a half of one rank runs the
    plain model). Returns ``(module to call, CFG strategy or None)``.
    """
    if not cfg_parallel:
        return (plan(model, group) if dist.get_world_size(group) > 1 else model), None
    split = split_for_cfg(group)
    sp = dist.get_world_size(split.branch_group) > 1
    return (plan(model, split.branch_group) if sp else model), ParallelCFG(split)


__all__ = [
    "CFGSplit", "DistributedAttention", "ParallelCFG", "ParallelPlan", "RingAttention", "UlyssesRingAttention",
    "Worker", "WorkerError", "WorkerPool", "check_heads", "heads_to_seq", "hybrid_attention_op", "hybrid_groups",
    "launch", "parallelize", "replace_sequence_attention", "ring_attention_op", "seq_to_heads", "shard_bounds",
    "split_for_cfg", "under_torchrun",
]
