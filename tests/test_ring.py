"""Ring attention and Ulysses x ring on 2 and 4 gloo ranks against single-process attention (and the tiny
Wan DiT) with identical inputs and weights; the block kernel and the exact merge on one process.

Spawning ranks costs seconds, so each world size is one module-scoped ``WorkerPool`` shared by tests.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from vidport.runtime.attention import sdpa_math
from vidport.runtime.models.wan.model import WanDiT
from vidport.runtime.models.wan.parallel import parallelize_wan
from vidport.runtime.parallel import shard_bounds
from vidport.runtime.parallel.ring import (
    attention_with_lse,
    hybrid_attention_op,
    hybrid_groups,
    merge_blocks,
    replace_sequence_attention,
    ring_attention_op,
)

from tests.test_parallel import TINY, TINY6, assert_same, reference_outputs

SEQ, HEADS, HEAD_DIM = 13, 6, 8  # 13 tokens: not divisible by 2 or 4 (padded shards); 6 heads: not by 4


def make_qkv_mask(seq=SEQ, heads=HEADS, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(3, batch, seq, heads, HEAD_DIM, generator=g)
    key_mask = torch.rand(batch, seq, generator=g) > 0.3  # holes anywhere, not only a padded tail
    key_mask[:, 0] = True  # every query has a key
    return q, k, v, key_mask


# --- what the ranks run (module level: spawned workers import them by name) ---------------------
def _sharded_attention(worker, q, k, v, key_mask, ulysses_size):
    """This rank's shard of the padded sequence through ring (ulysses_size None) or the hybrid; the
    shards gathered, the padding cut."""
    if ulysses_size is None:
        op = ring_attention_op(None)("sdpa-math")
    else:
        op = hybrid_attention_op(*hybrid_groups(ulysses_size))("sdpa-math")
    seq = q.shape[1]
    per_rank, padded = shard_bounds(seq, worker.world_size)
    pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, 0, 0, padded - seq))
    mine = slice(worker.rank * per_rank, (worker.rank + 1) * per_rank)
    full_mask = torch.nn.functional.pad(key_mask, (0, padded - seq), value=False)  # padded keys masked
    out = op(pad(q)[:, mine], pad(k)[:, mine], pad(v)[:, mine], full_mask).contiguous()
    shards = [torch.empty_like(out) for _ in range(worker.world_size)]
    dist.all_gather(shards, out)
    return torch.cat(shards, dim=1)[:, :seq]


def _wan_with(worker, cfg, state_dict, cases, ulysses_size):
    model = WanDiT(cfg).eval()
    model.load_state_dict(state_dict)
    model.set_attention_backend("sdpa-math")
    dit = parallelize_wan(model)  # shards the tokens over the world; its attention is swapped below
    make_op = ring_attention_op(None) if ulysses_size is None else hybrid_attention_op(*hybrid_groups(ulysses_size))
    assert replace_sequence_attention(dit, make_op) == cfg.num_layers
    with torch.no_grad():
        return {name: dit(*inputs) for name, inputs in cases.items()}


def _wan_ring_plan(worker, cfg, state_dict, cases):
    """Wan's own plan with ring attention: no head-count check, any number of ranks."""
    model = WanDiT(cfg).eval()
    model.load_state_dict(state_dict)
    model.set_attention_backend("sdpa-math")
    dit = parallelize_wan(model, attention=ring_attention_op(None))
    with torch.no_grad():
        return {name: dit(*inputs) for name, inputs in cases.items()}


# --- one process --------------------------------------------------------------------------------
def test_block_kernel_equals_sdpa_math():
    q, k, v, key_mask = make_qkv_mask()
    out, lse = attention_with_lse(q, k, v, key_mask)
    assert_same(out, sdpa_math(q, k, v, key_mask), "attention_with_lse vs sdpa-math")
    assert lse.shape == (2, SEQ, HEADS)


def test_merged_blocks_equal_attention_over_all_keys():
    q, k, v, key_mask = make_qkv_mask()
    key_mask[:, 5:9] = False  # one block entirely masked: it must contribute nothing
    cuts = [0, 5, 9, SEQ]
    out = lse = None
    for a, b in zip(cuts, cuts[1:]):
        part = attention_with_lse(q, k[:, a:b], v[:, a:b], key_mask[:, a:b])
        out, lse = part if out is None else merge_blocks(out, lse, *part)
    assert_same(out, sdpa_math(q, k, v, key_mask), "merged blocks vs sdpa-math")


# --- N ranks ------------------------------------------------------------------------------------
def test_ring_of_two_equals_one_process(pool2):
    q, k, v, key_mask = make_qkv_mask()
    got = pool2.run(_sharded_attention, q, k, v, key_mask, None)
    assert_same(got, sdpa_math(q, k, v, key_mask), "ring of 2 ranks")


# 6 heads on 4 ranks, which Ulysses alone cannot split (as Wan 1.3B's 12 on 8); U=4 needs 4 heads
@pytest.mark.parametrize("ulysses_size, heads", [(None, 6), (1, 6), (2, 6), (4, 4)],
                         ids=["ring", "U1xR4", "U2xR2", "U4xR1"])
def test_four_ranks_equal_one_process(pool4, ulysses_size, heads):
    q, k, v, key_mask = make_qkv_mask(heads=heads)
    got = pool4.run(_sharded_attention, q, k, v, key_mask, ulysses_size)
    assert_same(got, sdpa_math(q, k, v, key_mask), f"4 ranks, ulysses size {ulysses_size}")


def test_wan_ring_on_two_ranks_equals_one_process(pool2):
    state_dict, cases, want = reference_outputs(TINY)
    got = pool2.run(_wan_with, TINY, state_dict, cases, None)
    for name in cases:
        assert_same(got[name], want[name], f"Wan tiny, ring of 2 ({name})")


def test_wan_plan_with_ring_takes_heads_ulysses_cannot_split(pool4):
    """6 heads over 4 ranks: Ulysses refuses (as 12 heads over 8), the plan's ring option runs and equals 1 rank."""
    state_dict, cases, want = reference_outputs(TINY6)
    got = pool4.run(_wan_ring_plan, TINY6, state_dict, cases)
    for name in cases:
        assert_same(got[name], want[name], f"Wan 6 heads, parallelize_wan(attention=ring) on 4 ranks ({name})")


@pytest.mark.parametrize("ulysses_size", [None, 2], ids=["ring", "U2xR2"])
def test_wan_on_four_ranks_equals_one_process(pool4, ulysses_size):
    state_dict, cases, want = reference_outputs(TINY)
    got = pool4.run(_wan_with, TINY, state_dict, cases, ulysses_size)
    for name in cases:
        assert_same(got[name], want[name], f"Wan tiny, 4 ranks, ulysses size {ulysses_size} ({name})")
