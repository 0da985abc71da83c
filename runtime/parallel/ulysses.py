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
from torch import nn
from vidport.runtime.attention import AttentionOp

from vidport.errors import UserError


def _all_to_all(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Exchange ``x [P, ...]``: row ``i`` goes to rank ``i``; row ``i`` of the result came from rank ``i``."""
    x = x.contiguous()
    out = torch.empty_like(x)  # dense: empty_like keeps a strided input's strides, the collective would not
    dist.all_to_all_single(out, x, group=group)
    return out


def _heads_send(tensors: list[torch.Tensor], p: int, chunks: int = 1) -> torch.Tensor:
    """The send buffer of an exchange to head shards: each ``[B, S/P, H, D]`` (my tokens, all heads) ->
    ``[C, P, n, B, S/P, H/(P*C), D]``, where ``[c, j, i]`` is tensor i's head group c of rank j's heads."""
    b, s, h, d = tensors[0].shape
    hc = h // p // chunks
    send = tensors[0].new_empty(chunks, p, len(tensors), b, s, hc, d)
    for i, t in enumerate(tensors):
        send[:, :, i].copy_(t.unflatten(2, (p, chunks, hc)).permute(3, 2, 0, 1, 4, 5))
    return send


def _heads_received(recv: torch.Tensor) -> list[torch.Tensor]:
    """``[P, n, B, S/P, h, D]`` (row j: rank j's tokens, my heads) -> n x ``[B, S, h, D]`` in rank (= sequence)
    order."""
    p, n, b, s, h, d = recv.shape
    return list(recv.permute(1, 2, 0, 3, 4, 5).reshape(n, b, p * s, h, d).unbind(0))


def _seq_send(x: torch.Tensor, p: int) -> torch.Tensor:
    """``[..., S, h, D]`` (all tokens, my heads) -> ``[P, ..., S/P, h, D]``, dense: sequence chunk j for rank j."""
    return x.unflatten(-3, (p, x.shape[-3] // p)).movedim(-4, 0).contiguous()


def _seq_received(back: torch.Tensor) -> torch.Tensor:
    """``[C, P, ..., S/P, h, D]`` (``[c, j]``: my tokens of rank j's head group c) -> ``[..., S/P, P*C*h, D]``, heads
    in (rank, group) order."""
    c, p, *lead, s, h, d = back.shape
    return back.movedim(0, -3).movedim(0, -4).reshape(*lead, s, p * c * h, d)


def seq_to_heads(tensors: list[torch.Tensor], group: dist.ProcessGroup | None) -> list[torch.Tensor]:
    """Each ``[B, S/P, H, D]`` (my tokens, all heads) -> ``[B, S, H/P, D]`` (all tokens, my heads), in one
    all-to-all for all the tensors."""
    return _heads_received(_all_to_all(_heads_send(tensors, dist.get_world_size(group))[0], group))


def heads_to_seq(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """``[..., S, H/P, D]`` (all tokens, my heads) -> ``[..., S/P, H, D]`` (my tokens, all heads)."""
    return _seq_received(_all_to_all(_seq_send(x, dist.get_world_size(group)), group)[None])


def global_rank(group: dist.ProcessGroup | None, group_rank: int) -> int:
    """The default group's rank of ``group``'s rank ``group_rank`` (what point-to-point operations name)."""
    return group_rank if group is None else dist.get_global_rank(group, group_rank)


def check_heads(num_heads: int, world_size: int) -> None:
    """Ulysses splits the heads between ranks: fail in one line naming the sizes that work."""
    if num_heads % world_size:
        valid = [n for n in range(1, num_heads + 1) if num_heads % n == 0]
        raise UserError(f"sequence parallelism over {world_size} ranks needs the head count to divide evenly, "
                        f"but the model has {num_heads} heads; valid sizes: {', '.join(map(str, valid))}")


def shard_bounds(seq_len: int, world_size: int) -> tuple[int, int]:
    """(tokens per rank, padded length) for an even split with padding at the end."""
    per_rank = -(-seq_len // world_size)
    return per_rank, per_rank * world_size


def pipeline_chunks(local_heads: int, backend: str = "sdpa") -> int:
    """How many head groups ``DistributedAttention`` exchanges one after another by default: 2 (else 3) equal
    groups of at least 2 heads each, else 1 (no pipelining); 1 also for a backend whose kernel holds every SM
    (``runtime.attention.leaves_sms``: flash-attn-4), beside which the next group's all-to-all cannot run.
    Measured on H200s, a 1.3B DiT at 32760 tokens (BENCHMARKS.md): with cuDNN, 2-3 heads a group beat the plain
    exchange (2 GPUs: 273.9-274.6 vs 279.1 ms a forward) and single-head groups lost to it (4 GPUs, 3 heads a rank:
    146.9 vs 143.2 ms); with flash-attn-4 pipelining lost on 2 GPUs (250.8 and 246.5 vs 242.8 and 243.5 ms; 14B at
    720p 5222 vs 5131 ms)."""
    from vidport.runtime.attention import leaves_sms

    if not leaves_sms(backend):
        return 1
    return next((c for c in (2, 3) if local_heads % c == 0 and local_heads // c >= 2), 1)


def _exchange(send: torch.Tensor, out: torch.Tensor, group: dist.ProcessGroup | None):
    """Start the all-to-all of ``send [P, ...]`` into ``out``; the returned work's ``wait()`` makes the caller's
    stream wait for it."""
    return dist.all_to_all_single(out, send, group=group, async_op=True)


class _Works:
    """The works of one batch of point-to-point operations, waited for together (as one collective's work)."""

    def __init__(self, works):
        self.works = works

    def wait(self):
        for work in self.works:
            work.wait()


def _exchange_into(sends: list[list[torch.Tensor]], recvs: list[list[torch.Tensor]],
                   group: dist.ProcessGroup | None) -> _Works:
    """An all-to-all of several tensors per rank, each received straight into its own (contiguous) place:
    ``sends[j][i]`` goes to rank j, which receives it as its ``recvs[me][i]``. One batch of point-to-point
    operations (one NCCL group, as ``all_to_all_single`` itself); this rank's own part is a local copy."""
    me = dist.get_rank(group)
    ops = []
    for j in range(len(sends)):
        if j == me:
            for src, dst in zip(sends[j], recvs[j]):
                dst.copy_(src)
            continue
        peer = global_rank(group, j)
        ops += [dist.P2POp(dist.isend, t, peer, group) for t in sends[j]]
        ops += [dist.P2POp(dist.irecv, t, peer, group) for t in recvs[j]]
    return _Works(dist.batch_isend_irecv(ops) if ops else [])


class DistributedAttention(AttentionOp):
    """Self-attention over a sequence sharded across ``group``; a drop-in for ``AttentionOp``.

    ``q, k, v`` are this rank's shard ``[B, S/P, H, D]``; the local attention runs the backend named by
    ``backend`` (kept in sync by the model's ``set_attention_backend``). ``key_mask`` is over the *full*,
    padded sequence ``[B, S]`` and must be True on a prefix (padding at the end, as a family's parallel
    plan pads, ``shard_bounds``): padded keys are dropped rather than masked, so every backend works,
    masks or not.

    The exchange is pipelined over ``chunks`` groups of this rank's heads (default ``pipeline_chunks``): all
    groups' q/k/v all-to-alls are started at once, each group attends as soon as its own has arrived (while the
    next one travels), and its output starts back at once. Heads are independent, so the result is the unchunked
    one; only the communication that the attention cannot hide (the first group in, the last group out) is left
    on the critical path. ``chunks=1`` is the plain exchange. With one sample (``B = 1``) and ``direct_receive``
    every rank's q/k/v part is received straight into the full-sequence tensor the attention reads (point-to-point
    operations into contiguous slices), which saves the copy that reorders an all-to-all's output.
    """

    def __init__(self, backend: str, group: dist.ProcessGroup | None, chunks: int | None = None,
                 direct_receive: bool = True):
        super().__init__(backend)
        self.group = group
        self.chunks = chunks
        self.direct_receive = direct_receive

    def forward(self, q, k, v, key_mask=None):
        p = dist.get_world_size(self.group)
        b, s, h, d = q.shape
        chunks = self.chunks or pipeline_chunks(h // p, self.backend)
        if (h // p) % chunks:
            raise ValueError(f"{chunks} head groups do not divide this rank's {h // p} heads")
        hc = h // p // chunks
        n_keys = None
        if key_mask is not None:
            n_keys = int(key_mask.sum(dim=1).max())  # host sync; only when S is not divisible by P
        send = _heads_send([q, k, v], p, chunks)  # send[c, j, i]: tensor i's head group c of rank j's heads
        direct = b == 1 and self.direct_receive
        if direct:
            # every part lands where attention reads it: full[c, i] is tensor i of my head group c, all tokens
            full = q.new_empty(chunks, 3, p * s, hc, d)
            works = [_exchange_into([[send[c, j, i, 0] for i in range(3)] for j in range(p)],
                                    [[full[c, i, j * s:(j + 1) * s] for i in range(3)] for j in range(p)],
                                    self.group) for c in range(chunks)]
        else:
            recv = torch.empty_like(send)  # recv[c, j]: rank j's tokens of my head group c
            works = [_exchange(send[c], recv[c], self.group) for c in range(chunks)]
        back = q.new_empty(chunks, p, b, s, hc, d)  # back[c, j]: my tokens of rank j's head group c
        returns = []
        for c, work in enumerate(works):
            work.wait()
            if direct:
                qc, kc, vc = full[c].unsqueeze(1).unbind(0)  # 3 x [1, S, hc, D], views
            else:
                qc, kc, vc = _heads_received(recv[c])  # 3 x [B, S, hc, D]
            if n_keys is not None:
                kc, vc = kc[:, :n_keys], vc[:, :n_keys]
            out = super().forward(qc, kc, vc)  # [B, S, hc, D]
            returns.append(_exchange(_seq_send(out, p), back[c], self.group))  # sequence chunk j to rank j
        for work in returns:
            work.wait()
        return _seq_received(back)  # [B, S/P, H, D]


class SequenceParallelModel(nn.Module):
    """Base of a family plan's sequence-parallel wrapper: it holds the model (``dit``) and the process group, and
    answers for the model what the pipeline asks of a transformer (its config, dtype and attention backends). The
    family's subclass writes ``forward``: shard the tokens, run the model's stages, gather."""

    def __init__(self, dit: nn.Module, group: dist.ProcessGroup | None):
        super().__init__()
        self.dit = dit
        self.group = group

    @property
    def cfg(self):
        return self.dit.cfg

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.dtype

    def set_attention_backend(self, backend: str, cross_backend: str | None = None) -> None:
        """The local kernel of the distributed self-attention, and of the cross-attention."""
        self.dit.set_attention_backend(backend, cross_backend)


def shard_tokens(tokens: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], rank: int, world: int):
    """This rank's shard of a token sequence [B, S, ...] and of its RoPE tables (cos, sin) [S, ...]: -> (tokens,
    (cos, sin), key_mask). A length that ``world`` does not divide is padded at the end (tables with angle 0); the
    key mask [B, padded S] then marks the real keys for ``DistributedAttention`` (None when nothing is padded)."""
    import torch.nn.functional as F

    batch, seq_len = tokens.shape[:2]
    per_rank, padded = shard_bounds(seq_len, world)
    cos, sin = rope
    key_mask = None
    if padded != seq_len:
        pad = padded - seq_len
        tokens = F.pad(tokens, (0, 0) * (tokens.dim() - 2) + (0, pad))
        cos, sin = F.pad(cos, (0, 0, 0, pad), value=1.0), F.pad(sin, (0, 0, 0, pad))
        key_mask = (torch.arange(padded, device=tokens.device) < seq_len).expand(batch, padded)
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    return tokens[:, mine], (cos[mine], sin[mine]), key_mask


def install_sequence_attention(attentions, num_heads: int, group: dist.ProcessGroup | None, attention=None) -> None:
    """Give each self-attention module (``.attn_op``, as a family's blocks hold it) the op that runs it on a shard
    of the sequence: Ulysses over ``group`` (``attention=None``; the head count must divide by the ranks), or
    ``attention(backend)`` from ``runtime.parallel.ring`` (any head count). What a family's parallel plan calls."""
    if attention is None:
        check_heads(num_heads, dist.get_world_size(group))
        attention = lambda backend: DistributedAttention(backend, group)  # noqa: E731
    for attn in attentions:
        attn.attn_op = attention(attn.attn_op.backend)
