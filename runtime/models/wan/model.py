"""Native Wan2.1 text-to-video DiT. Math only: no process groups, environment reads or file I/O.

Numerics follow the official release (Wan-Video/Wan2.1 ``wan/modules/model.py``) and diffusers'
``WanTransformer3DModel``: sinusoidal time embedding as [cos, sin] computed in float64, per-block
modulation added to a learned table, the head modulated by the *unprojected* time embedding,
3-axis RoPE on interleaved pairs, text context zero-padded to ``text_len``. Under bf16 the norms,
modulation and time embedding stay in fp32 (the tensors of the modules ``WanTransformer3DModel`` declares
``_keep_in_fp32_modules``: ``runtime.loading`` applies the rule, the model only computes).

Two bf16 recipes (``precision``): ``fast`` keeps the residual stream in bf16, as diffusers does;
``official`` is the official generator's recipe (fp32 parameters under ``autocast(bf16)``): the residual
stream, its adds and norms, the modulation, ``time_proj`` and the head stay fp32, and only the GEMMs and the
attention run in bf16 (the loader keeps ``OFFICIAL_FP32_MODULES`` in fp32 for it). In fp32 the two are one.

Layout differences from the checkpoints (resolved by the name maps, not here): self-attention
q/k/v is one fused projection ``attn.qkv`` and cross-attention k/v is one fused ``cross_attn.kv``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from vidport.runtime.attention import AttentionOp
from vidport.runtime.kernels import fused
from vidport.runtime.kernels.fused import apply_rope
from vidport.runtime.layers import RMSNorm, set_block_attention
from vidport.runtime.models.wan.config import WanDiTConfig


# ----------------------------------------------------------------------------------------------
# Small pieces
# ----------------------------------------------------------------------------------------------
def sinusoidal_embedding(timestep: torch.Tensor, dim: int) -> torch.Tensor:
    """[B] -> [B, dim] as [cos, sin], computed in float64 like the official model."""
    half = dim // 2
    t = timestep.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, device=t.device, dtype=torch.float64) / half)
    angles = torch.outer(t, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


@lru_cache(maxsize=16)
def _rope_tables(grid: tuple[int, int, int], axes_dim: tuple[int, int, int], theta: float,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    f, h, w = grid
    angles = []
    for size, d in zip(grid, axes_dim):
        inv = 1.0 / torch.pow(theta, torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)
        angles.append(torch.outer(torch.arange(size, dtype=torch.float64, device=device), inv))  # [size, d/2]
    at, ah, aw = angles
    # [f, h, w, d/2 per axis] -> one row of angles per token in (frame, height, width) order
    grid_angles = torch.cat([
        at[:, None, None, :].expand(f, h, w, -1),
        ah[None, :, None, :].expand(f, h, w, -1),
        aw[None, None, :, :].expand(f, h, w, -1),
    ], dim=-1).reshape(f * h * w, -1)
    return grid_angles.cos().float(), grid_angles.sin().float()


def rope_tables(grid: tuple[int, int, int], cfg: WanDiTConfig, device: torch.device):
    """(cos, sin), each [f*h*w, head_dim/2] fp32, for the token grid (frames, height, width)."""
    return _rope_tables(tuple(grid), cfg.rope_axes_dim, cfg.rope_theta, torch.device(device))


class LayerNormFP32(nn.LayerNorm):
    """Affine LayerNorm with fp32 statistics and parameters, output in the input dtype
    (the official WanLayerNorm / diffusers FP32LayerNorm)."""

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) as fp32 [1, 1, C]: the ``mul, add`` of ``fused.norm_modulate``."""
        return self.weight.float()[None, None], self.bias.float()[None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused.norm_modulate(x, *self.affine(), self.eps)


# ----------------------------------------------------------------------------------------------
# Attention and block
# ----------------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    def __init__(self, cfg: WanDiTConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)  # one GEMM for q, k and v
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.norm_q = RMSNorm(cfg.dim, cfg.eps)
        self.norm_k = RMSNorm(cfg.dim, cfg.eps)
        self.attn_op = AttentionOp()
        # memory layout of q/k/v on the fused CUDA path (speed only): heads-first makes cuDNN attention
        # faster alone but its output then needs a copy; end to end on an H100 the two were equal
        # within noise (BENCHMARKS.md), so the simpler sequence-first layout is the default
        self.heads_first = False
        # v as a strided view of the projection instead of a copy (speed only; sequence-first layout).
        # None = when the backend is flash-attn-4: 445.8 vs 447.2 and 442.5 vs 445.0 ms per forward in two
        # H100 runs (BENCHMARKS.md); unmeasured with cuDNN, which was slower on views of a fused projection.
        self.v_view: bool | None = None

    def forward(self, x, rope, key_mask=None):
        qkv = self.qkv(x)  # one GEMM for q, k and v
        if fused.enabled_for(qkv):  # one launch: split, RMSNorm across heads, RoPE
            q, k, v = fused.qkv_norm_rope(qkv, self.norm_q.weight, self.norm_k.weight, *rope, self.norm_q.eps,
                                          self.num_heads, heads_first=self.heads_first, v_view=self._v_view())
        else:
            q, k, v = qkv.chunk(3, dim=-1)
            # [B, S, dim] -> [B, S, heads, head_dim]
            q = apply_rope(self.norm_q(q).unflatten(-1, (self.num_heads, -1)), *rope)
            k = apply_rope(self.norm_k(k).unflatten(-1, (self.num_heads, -1)), *rope)
            v = v.unflatten(-1, (self.num_heads, -1))
        return self.proj(self.attn_op(q, k, v, key_mask).flatten(2))

    def _v_view(self) -> bool:
        if self.v_view is None:
            return not self.heads_first and self.attn_op.backend == "flash-attn-4"
        return self.v_view


class CrossAttention(nn.Module):
    """Attention from video tokens to the text context; no RoPE, no mask (the official T2V attends
    to the zero-padded context too)."""

    def __init__(self, cfg: WanDiTConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.kv = nn.Linear(cfg.dim, 2 * cfg.dim)  # one GEMM for k and v
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.norm_q = RMSNorm(cfg.dim, cfg.eps)
        self.norm_k = RMSNorm(cfg.dim, cfg.eps)
        self.attn_op = AttentionOp()

    def forward(self, x, context):
        q = self.norm_q(self.q(x))
        k, v = self.kv(context).chunk(2, dim=-1)
        k = self.norm_k(k)
        q, k, v = (t.unflatten(-1, (self.num_heads, -1)) for t in (q, k, v))
        return self.proj(self.attn_op(q, k, v).flatten(2))


class FeedForward(nn.Module):
    def __init__(self, cfg: WanDiTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.dim)

    def forward(self, x):
        if fused.enabled_for(x):  # GELU(tanh) in the GEMM epilogue
            return self.fc2(fused.linear_gelu_tanh(x, self.fc1.weight, self.fc1.bias))
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class WanBlock(nn.Module):
    def __init__(self, cfg: WanDiTConfig):
        super().__init__()
        self.eps = cfg.eps
        # learned (shift, scale, gate) x (self-attn, ffn), added to the projected time embedding
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim**0.5)
        self.attn = SelfAttention(cfg)
        self.cross_norm = LayerNormFP32(cfg.dim, eps=cfg.eps) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(cfg)
        self.ffn = FeedForward(cfg)

    def forward(self, x, mod, context, rope, key_mask=None):
        # x: the residual stream (the GEMMs' dtype, or fp32 in official precision); mod: [B, 6, dim] fp32
        # projected time embedding. The normalized tokens go to the GEMMs in the GEMMs' dtype.
        gemm = self.attn.qkv.weight.dtype
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.float() + mod).chunk(6, dim=1)

        # 1. self-attention on the modulated, normalized tokens; gated residual (fp32 math)
        h = fused.norm_modulate(x, 1 + scale1, shift1, self.eps, gemm)
        y = self.attn(h, rope, key_mask)

        # 2. cross-attention to the text (affine norm, no modulation); plain residual.
        #    On the fused path each residual add runs in one pass with the norm that follows it; the
        #    cross-attention norm module still runs itself when a hook observes it (parity captures).
        norm = self.cross_norm
        if fused.enabled_for(x, gemm) and isinstance(norm, LayerNormFP32) and not (norm._forward_hooks
                                                                                    or norm._forward_pre_hooks):
            x, h = fused.residual_norm(x, y, gate1, *norm.affine(), norm.eps, gemm)
        else:
            x = fused.gated_residual(x, y, gate1)
            h = norm(x).to(gemm)
        y = self.cross_attn(h, context)

        # 3. feed-forward on the modulated, normalized tokens; gated residual
        x, h = fused.residual_norm(x, y, None, 1 + scale2, shift2, self.eps, gemm)
        return fused.gated_residual(x, self.ffn(h), gate2)


class Head(nn.Module):
    def __init__(self, cfg: WanDiTConfig):
        super().__init__()
        self.eps = cfg.eps
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)
        self.proj = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)

    def forward(self, x, temb):
        # the head is modulated by the unprojected time embedding temb [B, dim]; it computes in its
        # projection's dtype (fp32 in official precision, where the loader keeps it fp32)
        shift, scale = (self.modulation.float() + temb.float()[:, None, :]).chunk(2, dim=1)
        return self.proj(fused.norm_modulate(x, 1 + scale, shift, self.eps, self.proj.weight.dtype))


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------
PRECISIONS = ("fast", "official")


class WanDiT(nn.Module):
    """Wan2.1 T2V diffusion transformer.

    ``forward(x [B, C, F, H, W], timestep [B], context [B, L<=text_len, text_dim]) -> [B, C_out, F, H, W]``.
    The stages (``embed``, ``blocks``, ``head``, ``unpatchify``) are public so that
    ``runtime.parallel`` can shard the token sequence between them.

    ``precision``: ``fast`` (the residual stream in the model's dtype) or ``official`` (the stream, its norms
    and the head in fp32, GEMMs and attention in the model's dtype; see the module docstring).
    """

    # the modules the official generator computes in fp32 with fp32 parameters (``autocast(dtype=float32)``
    # regions) that diffusers' keep-in-fp32 rule does not keep: kept fp32 by the loader in official precision
    OFFICIAL_FP32_MODULES = ("time_proj", "head.proj")

    def __init__(self, cfg: WanDiTConfig, precision: str = "fast"):
        super().__init__()
        self.cfg = cfg
        self.set_precision(precision)
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embed = nn.Sequential()
        self.text_embed.fc1 = nn.Linear(cfg.text_dim, cfg.dim)
        self.text_embed.act = nn.GELU(approximate="tanh")
        self.text_embed.fc2 = nn.Linear(cfg.dim, cfg.dim)
        self.time_embed = nn.Sequential()
        self.time_embed.fc1 = nn.Linear(cfg.freq_dim, cfg.dim)
        self.time_embed.act = nn.SiLU()
        self.time_embed.fc2 = nn.Linear(cfg.dim, cfg.dim)
        self.time_proj = nn.Linear(cfg.dim, 6 * cfg.dim)
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    @property
    def stream_dtype(self) -> torch.dtype:
        """The residual stream's dtype: fp32 in official precision, else the model's."""
        return torch.float32 if self.precision == "official" else self.dtype

    def set_precision(self, precision: str) -> None:
        """``fast`` or ``official`` (the class docstring); takes effect on the next forward."""
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        self.precision = precision

    def set_attention_backend(self, backend: str, cross_backend: str | None = None) -> None:
        """The kernel of the self-attention and, when given, a different one for the cross-attention
        (``runtime.attention.resolve_backends`` picks the fastest of each)."""
        set_block_attention(self.blocks, backend, cross_backend)

    # --- stages --------------------------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """[B, C, F, H, W] -> tokens [B, f*h*w, dim] in (frame, height, width) order (the residual stream,
        in ``stream_dtype``), and the grid."""
        x = self.patch_embedding(x.to(self.dtype))
        grid = tuple(x.shape[2:])
        # official precision: the embedding's bf16 output, widened exactly (its first residual add is fp32)
        return x.flatten(2).transpose(1, 2).to(self.stream_dtype), grid

    def embed_time(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """timestep [B] -> (temb [B, dim] fp32, per-block modulation input [B, 6, dim] fp32)."""
        emb = sinusoidal_embedding(timestep.reshape(-1), self.cfg.freq_dim)
        temb = self.time_embed(emb.to(self.time_embed.fc1.weight.dtype)).float()
        mod = self.time_proj(F.silu(temb).to(self.time_proj.weight.dtype)).float()
        return temb, mod.unflatten(1, (6, self.cfg.dim))

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """[B, L, text_dim] -> [B, text_len, dim]; zero-pads to text_len as the official model does
        (an unpadded context changes the output)."""
        n = context.shape[1]
        if n > self.cfg.text_len:
            raise ValueError(f"text context has {n} tokens, more than text_len={self.cfg.text_len}")
        if n < self.cfg.text_len:
            context = F.pad(context, (0, 0, 0, self.cfg.text_len - n))
        return self.text_embed(context.to(self.dtype))

    def unpatchify(self, out: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, f*h*w, pt*ph*pw*C] (channel fastest) -> [B, C, f*pt, h*ph, w*pw]."""
        f, h, w = grid
        pt, ph, pw = self.cfg.patch_size
        x = out.reshape(out.shape[0], f, h, w, pt, ph, pw, -1)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # B, C, f, pt, h, ph, w, pw
        return x.reshape(out.shape[0], -1, f * pt, h * ph, w * pw)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        tokens, grid = self.patchify(x)
        rope = rope_tables(grid, self.cfg, tokens.device)
        temb, mod = self.embed_time(timestep)
        ctx = self.embed_text(context)
        for block in self.blocks:
            tokens = block(tokens, mod, ctx, rope)
        return self.unpatchify(self.head(tokens, temb), grid)
