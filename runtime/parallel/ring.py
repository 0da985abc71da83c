"""Ring attention, and Ulysses x ring: sequence parallelism that does not need the heads to divide by the ranks.

**Ring.** Each of the ``R`` ranks holds its shard ``[B, S/R, H, D]`` of q, k and v with all heads. The
k/v shards travel around the ring (rank ``i`` sends to ``i + 1`` and receives from ``i - 1``, point to
point, the next transfer in flight while the current block is attended): after ``R`` steps every local
query has seen every key. Each step attends the local queries to the visiting block and keeps the block's
log-sum-exp; the partial outputs are merged exactly, in fp32 (online softmax):
``lse = log(sum_i exp(lse_i))``, ``out = sum_i exp(lse_i - lse) * out_i``. Padded keys (the tail past the
true length) are masked, not dropped, so shards stay equal-sized; a block whose keys are all masked
contributes nothing.

**Ulysses x ring.** With ``U * R`` ranks, rank ``r * U + u`` is member ``u`` of Ulysses group ``r``
(``U`` consecutive ranks) and member ``r`` of ring group ``u`` (ranks ``u, U + u, 2U + u, ...``). The
all-to-all inside a Ulysses group turns its ``U`` consecutive sequence shards into one contiguous chunk
``r`` of ``U * S/(U*R)`` tokens with ``H/U`` heads; the ring then runs over the ``R`` chunks for those
heads, and the reverse all-to-all restores ``[B, S/(U*R), H, D]``. Only ``U`` must divide the heads: Wan
1.3B (12 heads) on 8 ranks runs as ``U=4, R=2`` or ``U=2, R=4``.

**Block kernel.** Each step needs the block's log-sum-exp, which the backends in ``runtime.attention`` do
not return, so every block runs ``attention_with_lse``: plain torch math (``q @ k^T * scale``, masked,
logsumexp, ``softmax @ v``) in fp32, named ``BLOCK_KERNEL``. The op's ``backend`` attribute is kept (a
model's ``set_attention_backend`` writes it) but not used by the ring. A fused kernel that returns the
LSE (flash-attn's ``return_lse``, cuDNN) is what a GPU run would want instead; not done yet.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from vidport.runtime.attention import AttentionOp
from vidport.runtime.parallel.ulysses import DistributedAttention, check_heads, global_rank, heads_to_seq, seq_to_heads

from vidport.errors import UserError

BLOCK_KERNEL = "torch-math-fp32"  # what attends each ring step (see attention_with_lse)

# backend name -> the sequence-parallel op that replaces an AttentionOp (a family's parallel plan calls it)
AttentionOpFactory = Callable[[str], AttentionOp]


# ----------------------------------------------------------------------------------------------
# One block, and merging blocks
# ----------------------------------------------------------------------------------------------
def attention_with_lse(q, k, v, key_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``q [B, Sq, H, D]`` to ``k, v [B, Sk, H, D]`` in fp32 plain torch math.

    Returns ``(out [B, Sq, H, D], lse [B, Sq, H])``, both fp32; a query whose keys are all masked gets
    ``out = 0`` and ``lse = -inf`` (it contributes nothing when merged).
    """
    scale = q.shape[-1] ** -0.5
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [B, H, Sq]
    probs = torch.exp(scores - _finite(lse)[..., None])  # exp(-inf) = 0 on masked keys
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v.float())
    return out, lse.transpose(1, 2)


def _finite(lse: torch.Tensor) -> torch.Tensor:
    # -inf (no key at all) -> 0, so that subtracting it keeps exp(-inf - 0) = 0 instead of nan
    return torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)


def merge_blocks(out, lse, block_out, block_lse) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two softmax-normalised partial results over disjoint key sets, exactly (fp32)."""
    new_lse = torch.logaddexp(lse, block_lse)
    base = _finite(new_lse)
    out = torch.exp(lse - base)[..., None] * out + torch.exp(block_lse - base)[..., None] * block_out
    return out, new_lse


# ----------------------------------------------------------------------------------------------
# The ring
# ----------------------------------------------------------------------------------------------
def ring_attention(q, k, v, key_mask, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Attention of this rank's queries to every rank's keys over ``group``; fp32 ``[B, S/R, H, D]``.

    ``q, k, v``: this rank's shard ``[B, S/R, H, D]`` (group rank ``i`` holds tokens ``i*S/R ..``).
    ``key_mask``: ``[B, S]`` over the whole (padded) sequence, True = attend, any pattern.
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    block = k.shape[1]
    if key_mask is not None and key_mask.shape[1] != block * world:
        raise ValueError(f"ring attention: key_mask covers {key_mask.shape[1]} keys, but {world} ranks of "
                         f"{block} tokens hold {block * world}; pass the mask of the whole padded sequence")
    send_to, recv_from = global_rank(group, (rank + 1) % world), global_rank(group, (rank - 1) % world)
    kv = torch.stack([k, v]).contiguous()  # one message per step for k and v
    out = lse = None
    for step in range(world):
        pending = []
        if step + 1 < world:  # start passing this block on before attending it: transfer overlaps compute
            incoming = torch.empty_like(kv)
            pending = dist.batch_isend_irecv([dist.P2POp(dist.isend, kv, send_to, group),
                                              dist.P2POp(dist.irecv, incoming, recv_from, group)])
        owner = (rank - step) % world  # the rank whose tokens kv holds now
        mask = None if key_mask is None else key_mask[:, owner * block:(owner + 1) * block]
        block_out, block_lse = attention_with_lse(q, kv[0], kv[1], mask)
        out, lse = (block_out, block_lse) if out is None else merge_blocks(out, lse, block_out, block_lse)
        for request in pending:
            request.wait()
        if pending:
            kv = incoming
    return out


class RingAttention(AttentionOp):
    """Self-attention over a sequence sharded across ``group`` by ring attention; a drop-in for
    ``AttentionOp`` like ``DistributedAttention``, but every rank keeps all heads (any head count works).

    ``q, k, v`` are this rank's shard ``[B, S/P, H, D]``; ``key_mask`` is over the full, padded sequence
    ``[B, S]``. Each block runs ``attention_with_lse`` (``BLOCK_KERNEL``), whatever ``backend`` says.
    """

    def __init__(self, backend: str, group: dist.ProcessGroup | None):
        super().__init__(backend)
        self.group = group

    def forward(self, q, k, v, key_mask=None):
        return ring_attention(q, k, v, key_mask, self.group).to(q.dtype)


class UlyssesRingAttention(AttentionOp):
    """Ulysses all-to-all inside ``ulysses_group`` (heads split ``U`` ways), ring attention across
    ``ring_group`` (``R`` chunks); built from ``hybrid_groups``, whose layout the shards must follow:
    world rank ``r * U + u`` holds sequence shard ``r * U + u``."""

    def __init__(self, backend: str, ulysses_group: dist.ProcessGroup, ring_group: dist.ProcessGroup):
        super().__init__(backend)
        self.ulysses_group = ulysses_group
        self.ring_group = ring_group

    def forward(self, q, k, v, key_mask=None):
        check_heads(q.shape[2], dist.get_world_size(self.ulysses_group))
        # [B, S/(U*R), H, D] -> [B, S/R, H/U, D]: chunk r of the sequence, my heads
        q, k, v = seq_to_heads([q, k, v], self.ulysses_group)
        out = ring_attention(q, k, v, key_mask, self.ring_group).to(q.dtype)
        return heads_to_seq(out, self.ulysses_group)  # [B, S/(U*R), H, D]


# ----------------------------------------------------------------------------------------------
# Plans: groups, and the ops a family's parallel plan installs
# ----------------------------------------------------------------------------------------------
def hybrid_groups(ulysses_size: int, group: dist.ProcessGroup | None = None
                  ) -> tuple[dist.ProcessGroup, dist.ProcessGroup]:
    """(Ulysses group, ring group) of this rank for ``U = ulysses_size`` and ``R = size(group) / U``.

    Group rank ``r * U + u`` of ``group`` (default: the world) joins Ulysses group ``r`` (``U`` consecutive
    ranks) and ring group ``u`` (every ``U``-th rank). ``new_group`` is collective: every rank of the world
    must call this, in step.
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if ulysses_size < 1 or world % ulysses_size:
        raise UserError(f"Ulysses x ring over {world} ranks needs a Ulysses size that divides {world}, "
                        f"got {ulysses_size}")
    ranks = dist.get_process_group_ranks(group) if group is not None else list(range(world))
    u_size, r_size = ulysses_size, world // ulysses_size
    # every rank creates every group, in the same order
    ulysses = [dist.new_group(ranks[r * u_size:(r + 1) * u_size]) for r in range(r_size)]
    rings = [dist.new_group(ranks[u::u_size]) for u in range(u_size)]
    return ulysses[rank // u_size], rings[rank % u_size]


def ring_attention_op(group: dist.ProcessGroup | None) -> AttentionOpFactory:
    """``backend -> RingAttention`` over ``group``: what a parallel plan installs for ring attention."""
    return lambda backend: RingAttention(backend, group)


def hybrid_attention_op(ulysses_group: dist.ProcessGroup, ring_group: dist.ProcessGroup) -> AttentionOpFactory:
    """``backend -> UlyssesRingAttention`` over the groups of ``hybrid_groups``."""
    return lambda backend: UlyssesRingAttention(backend, ulysses_group, ring_group)


def replace_sequence_attention(module: nn.Module, make_op: AttentionOpFactory) -> int:
    """Swap every ``DistributedAttention`` inside ``module`` (as a family's parallel plan installed them)
    for ``make_op(its backend)``; returns how many were swapped. The token sharding of the plan stays: it
    must be over the world (the whole ring, or all ``U * R`` ranks of the hybrid), in rank order."""
    swapped = 0
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, DistributedAttention):
                setattr(parent, name, make_op(child.backend))
                swapped += 1
    return swapped
