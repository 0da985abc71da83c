"""LTX-Video's parallel plan (``FamilySpec.parallel_plan``): the sequence-parallel LTX DiT, applied from outside,
so the model file holds no collectives.

``parallelize_ltx(model, group)`` swaps every self-attention ``AttentionOp`` for a ``DistributedAttention``
(Ulysses; or ring / Ulysses x ring through ``attention=``) and wraps the model's stages: every rank projects the
(replicated) packed latents, keeps its shard of the token sequence with the matching rows of the RoPE tables, runs
the blocks and the head on it, and the shards are gathered in sequence order. The cross-attention to the text
stays local (the text and its mask are replicated). A token count not divisible by the ranks is padded at the end;
the padded keys are dropped inside the attention and the padded tokens cut off after the gather.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from vidport.runtime.models.ltx_video.model import LTXDiT
from vidport.runtime.parallel.ulysses import SequenceParallelModel, install_sequence_attention, shard_tokens


class SequenceParallelLTXDiT(SequenceParallelModel):
    """``forward`` like ``LTXDiT`` (packed tokens in, packed tokens out), with the tokens split over ``group``.
    Every rank of ``group`` must call it with the same inputs; every rank gets the full output."""

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, timestep: torch.Tensor,
                encoder_attention_mask: torch.Tensor | None = None, num_frames: int | None = None,
                height: int | None = None, width: int | None = None, rope_interpolation_scale=None) -> torch.Tensor:
        dit, rank, world = self.dit, dist.get_rank(self.group), dist.get_world_size(self.group)
        grid = (num_frames, height, width)
        seq_len = hidden_states.shape[1]
        if None in grid or math.prod(grid) != seq_len:
            raise ValueError(f"num_frames x height x width = {grid} must give the {seq_len} tokens of hidden_states")

        # 1. every rank keeps its shard of the tokens and of the RoPE tables
        rope = dit.rope(grid, rope_interpolation_scale, hidden_states.device)
        tokens, rope, key_mask = shard_tokens(hidden_states, rope, rank, world)
        x = dit.proj_in(tokens.to(dit.dtype))

        # 2. the blocks and the head on the shard; self-attention exchanges shards inside
        temb, mod = dit.embed_time(timestep)
        text = dit.embed_text(encoder_hidden_states)
        text_mask = dit.text_key_mask(encoder_attention_mask)
        out = dit.head(dit.run_blocks(x, mod, text, rope, text_mask, key_mask), temb).contiguous()

        # 3. gather the shards in rank (= sequence) order and drop the padding
        shards = [torch.empty_like(out) for _ in range(world)]
        dist.all_gather(shards, out, group=self.group)
        return torch.cat(shards, dim=1)[:, :seq_len]


def parallelize_ltx(model: LTXDiT, group: dist.ProcessGroup | None = None, *, attention=None) -> SequenceParallelLTXDiT:
    """Shard ``model``'s token sequence over ``group`` (default: the whole world). ``attention``: None = Ulysses
    (the head count must divide by the ranks), or a factory ``backend -> op`` from ``runtime.parallel.ring``.
    Replaces the self-attention ops of ``model`` in place and returns the wrapper to call instead."""
    install_sequence_attention((block.attn for block in model.blocks), model.cfg.num_attention_heads, group, attention)
    return SequenceParallelLTXDiT(model, group)
