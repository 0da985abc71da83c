"""Wan's parallel plan (``FamilySpec.parallel_plan``): the sequence-parallel Wan DiT, applied from
outside, so the model file holds no collectives.

``parallelize_wan(model, group)`` swaps every self-attention ``AttentionOp`` for a
``DistributedAttention`` (cross-attention to the text stays local: the text is replicated) and wraps
the model's stages: every rank patchifies the (replicated) latents, keeps its shard of the token
sequence with the matching rows of the RoPE tables, runs the blocks and the head on it, and the
shards are gathered before unpatchify. A sequence length not divisible by the number of ranks is
padded at the end; the padded keys are dropped inside the attention and the padded tokens cut off
after the gather.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from vidport.runtime.models.wan.model import WanDiT, rope_tables
from vidport.runtime.parallel.ulysses import SequenceParallelModel, install_sequence_attention, shard_tokens


class SequenceParallelWanDiT(SequenceParallelModel):
    """``forward(x, timestep, context)`` like ``WanDiT``, with the token sequence split over ``group``.

    Every rank of ``group`` must call it with the same inputs; every rank gets the full output.
    """

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        dit, rank, world = self.dit, dist.get_rank(self.group), dist.get_world_size(self.group)

        # 1. every rank embeds the full input (cheap), then keeps its shard of the tokens
        tokens, grid = dit.patchify(x)
        seq_len = tokens.shape[1]
        tokens, rope, key_mask = shard_tokens(tokens, rope_tables(grid, dit.cfg, tokens.device), rank, world)

        # 2. the blocks and the head on the shard; self-attention exchanges shards inside
        temb, mod = dit.embed_time(timestep)
        ctx = dit.embed_text(context)
        for block in dit.blocks:
            tokens = block(tokens, mod, ctx, rope, key_mask)
        out = dit.head(tokens, temb).contiguous()  # [B, S/P, pt*ph*pw*C]

        # 3. gather the shards in rank (= sequence) order, drop the padding, unpatchify
        shards = [torch.empty_like(out) for _ in range(world)]
        dist.all_gather(shards, out, group=self.group)
        return dit.unpatchify(torch.cat(shards, dim=1)[:, :seq_len], grid)


def parallelize_wan(model: WanDiT, group: dist.ProcessGroup | None = None, *,
                    attention=None) -> SequenceParallelWanDiT:
    """Shard ``model``'s token sequence over ``group`` (default: the whole world).

    ``attention``: how each self-attention runs on its shard: None = Ulysses (the head count must divide
    by the ranks), or a factory ``backend -> op`` from ``runtime.parallel.ring`` (``ring_attention_op``,
    ``hybrid_attention_op``: any head count, e.g. Wan 1.3B's 12 heads on 8 ranks). Replaces the
    self-attention ops of ``model`` in place and returns the wrapper to call instead.
    """
    install_sequence_attention((block.attn for block in model.blocks), model.cfg.num_heads, group, attention)
    return SequenceParallelWanDiT(model, group)
