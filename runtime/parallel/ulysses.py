"""Ulysses sequence parallelism: all-to-all between a sequence shard and a head shard.

Each rank holds ``S/P`` tokens with all ``H`` heads. Attention needs every token, but heads are
independent, so one all-to-all turns ``[B, S/P, H, D]`` into ``[B, S, H/P, D]`` (scatter heads, gather
sequence), each rank attends over the full sequence with its ``H/P`` heads, and the reverse
all-to-all restores ``[B, S/P, H, D]``. Communication per layer is ``4 * B * S * H * D / P`` elements
per rank, independent of the number of ranks' sequence shards.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from runtime.models.wan.model import AttentionOp


def _all_to_all(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Exchange ``x [P, ...]``: row ``i`` goes to rank ``i``; row ``i`` of the result came from rank ``i``."""
    x = x.contiguous()
    out = torch.empty_like(x)  # after .contiguous(): empty_like keeps strides, the collective assumes dense
    dist.all_to_all_single(out, x, group=group)
    return out


def seq_to_heads(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """``[..., S/P, H, D]`` (my tokens, all heads) -> ``[..., S, H/P, D]`` (all tokens, my heads)."""
    p = dist.get_world_size(group)
    *lead, s, h, d = x.shape
    # [..., s, P, h/P, d] -> [P, ..., s, h/P, d]: chunk i of the heads goes to rank i
    x = x.reshape(*lead, s, p, h // p, d).movedim(-3, 0)
    x = _all_to_all(x, group)  # row i: rank i's tokens, my heads
    # [P, ..., s, h/P, d] -> [..., P*s, h/P, d] in rank (= sequence) order
    return x.movedim(0, -4).reshape(*lead, p * s, h // p, d)


def heads_to_seq(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """``[..., S, H/P, D]`` (all tokens, my heads) -> ``[..., S/P, H, D]`` (my tokens, all heads)."""
    p = dist.get_world_size(group)
    *lead, s, h, d = x.shape
    # [..., P, S/P, h, d] -> [P, ..., S/P, h, d]: sequence chunk i goes back to rank i
    x = x.reshape(*lead, p, s // p, h, d).movedim(-4, 0)
    x = _all_to_all(x, group)  # row j: my tokens, rank j's heads
    # [P, ..., S/P, h, d] -> [..., S/P, P*h, d] with heads in rank order
    return x.movedim(0, -3).reshape(*lead, s // p, p * h, d)


class DistributedAttention(AttentionOp):
    """Self-attention over a sequence sharded across ``group``; a drop-in for ``AttentionOp``.

    ``q, k, v`` are this rank's shard ``[B, S/P, H, D]``; the local attention runs the backend named by
    ``backend`` (kept in sync by ``WanDiT.set_attention_backend``). ``key_mask`` is over the *full*,
    padded sequence ``[B, S]`` and must be True on a prefix (padding at the end, as
    ``runtime.parallel.wan`` pads): padded keys are dropped rather than masked, so every backend
    works, masks or not.
    """

    def __init__(self, backend: str, group: dist.ProcessGroup | None):
        super().__init__(backend)
        self.group = group

    def forward(self, q, k, v, key_mask=None):
        # one all-to-all for q, k and v: [3, B, S/P, H, D] -> [3, B, S, H/P, D]
        q, k, v = seq_to_heads(torch.stack([q, k, v]), self.group)
        if key_mask is not None:
            n_keys = int(key_mask.sum(dim=1).max())  # host sync; only when S is not divisible by P
            k, v = k[:, :n_keys], v[:, :n_keys]
        out = super().forward(q, k, v)
        return heads_to_seq(out, self.group)
