"""Native LTX-Video DiT. Math only: no process groups, environment reads or file I/O.

Numerics follow diffusers' ``LTXVideoTransformer3DModel`` (``transformer_ltx.py``), itself a port of the official
``Transformer3DModel`` (Lightricks/LTX-Video):

- tokens come in packed, ``[B, f*h*w, in_channels]`` in (frame, height, width) order, as LTX's pipeline packs
  the latents (``patchify`` / ``unpatchify`` here are that packing); ``proj_in`` is a Linear.
- adaLN-single (PixArt-alpha): one timestep embedding (sinusoid [cos, sin] over 256 channels, MLP) projected to
  6 * dim once, added to each block's learned ``modulation`` table [6, dim]; the head adds the *unprojected*
  embedding to its own [2, dim] table.
- self-attention: q/k RMSNorm over the full dim (across heads) with affine weights, then RoPE over the full dim
  as well (so each head sees its own slice of the table), then the heads are split.
- RoPE from fractional positions: token (t, y, x) -> (t * s_t * patch_t / 20, y * s_y * patch / 2048,
  x * s_x * patch / 2048) with s = ``rope_interpolation_scale`` (unscaled integer positions when it is None);
  per axis dim // 6 frequencies theta ** linspace(0, 1), angle = freq * pi / 2 * (2 * pos - 1), the three axes
  interleaved per frequency, each angle rotating one pair of channels; when dim is not a multiple of 6 the
  first dim % 6 channels are left unrotated (cos 1, sin 0).
- cross-attention reads the residual stream itself (no norm before it) and the projected caption, with the text
  mask: masked keys get no weight. A sample whose mask is all zero attends to every key, as the reference's
  additive -10000 bias makes it do.
- feed-forward GELU(tanh), 4 * dim; the head: LayerNorm (no affine), modulation, ``proj``.

dtype: everything computes in the model's dtype as diffusers does (no module is kept in fp32; the norms' statistics
and the RoPE rotation run in fp32 and are cast back, as in the reference). On CUDA in bf16/fp16 the elementwise work
runs in the fused Triton kernels of ``runtime.kernels.fused`` (norm + modulation, gated residual, residual + next
norm, q/k norm + RoPE): the same math with fp32 inside each kernel and one rounding at its end, where the reference
rounds after every op. There, while no hook observes the modules involved (``fused.unobserved``; parity captures
hook every module), the projections that feed a fused kernel (self-attention out, cross-attention q and out, FFN
fc2) run as plain GEMMs and that kernel adds their bias in fp32: cuBLASLt's bias epilogue cost 2-8% of those GEMMs'
time on an H200 (``benchmarks/bench_ltx.py parts``), and the projection's output is rounded before its bias rather
than after; and each block's last residual add also makes the next block's first normalized input
(``LTXDiT.run_blocks``).

Layout differences from the Diffusers checkpoint (resolved by the name map ``maps/diffusers_to_native.map``, not
here): self-attention q/k/v is one fused projection ``attn.qkv`` and cross-attention k/v one fused
``cross_attn.kv``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from vidport.runtime.attention import AttentionOp
from vidport.runtime.kernels import fused
from vidport.runtime.kernels.fused import apply_rope
from vidport.runtime.layers import RMSNorm, set_block_attention
from vidport.runtime.models.ltx_video.config import (
    FFN_MULT,
    OUT_NORM_EPS,
    QK_NORM_EPS,
    ROPE_BASE,
    ROPE_THETA,
    TIME_FREQ_DIM,
    LTXDiTConfig,
)

Grid = tuple[int, int, int]  # tokens along (frames, height, width)


_SCALE_ONES: dict[torch.device, torch.Tensor] = {}


def modulation_table(learned: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
    """A block's (shift, scale, gate) x 2 table for the fused kernels: (learned + projected time embedding), rounded
    in the model's dtype as the reference adds them, in fp32 with 1 added to the scale rows. Broadcasts: [6, dim]
    and [B, 6, dim] give one block's [B, 6, dim]; [n, 1, 6, dim] and [1, B, 6, dim] every block's at once."""
    return (learned + mod).float() + _scale_ones(mod.device)


def _scale_ones(device: torch.device) -> torch.Tensor:
    """[6, 1] adding 1 to the scale rows of a block's (shift, scale, gate) x 2 modulation table: (1 + scale) as the
    fused kernels take it. Cached per device in eager mode (made once, never copied from the host again); a
    constant of the graph under torch.compile."""
    if torch.compiler.is_compiling():
        return torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0], device=device)[:, None]
    if device not in _SCALE_ONES:
        _SCALE_ONES[device] = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0], device=device)[:, None]
    return _SCALE_ONES[device]


# ----------------------------------------------------------------------------------------------
# Small pieces
# ----------------------------------------------------------------------------------------------
def timestep_features(timestep: torch.Tensor, dim: int = TIME_FREQ_DIM) -> torch.Tensor:
    """[B] -> [B, dim] fp32 as [cos, sin] (diffusers' ``Timesteps(256, flip_sin_to_cos=True, shift=0)``)."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(0, half, dtype=torch.float32, device=timestep.device) / half
    angles = timestep[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def rope_positions(grid: Grid, cfg: LTXDiTConfig, scale, device: torch.device) -> torch.Tensor:
    """Fractional positions [f*h*w, 3] fp32 of the tokens, in (frame, height, width) order.

    ``scale`` is ``rope_interpolation_scale`` (frames, height, width): floats or 0-dim tensors; None leaves the
    integer grid unscaled (diffusers does the same)."""
    axes = [torch.arange(n, dtype=torch.float32, device=device) for n in grid]
    pos = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)  # [3, f, h, w]
    if scale is not None:
        patch = (cfg.patch_size_t, cfg.patch_size, cfg.patch_size)
        # the reference's order of operations, so the positions are bit-equal
        pos = torch.stack([pos[i] * scale[i] * patch[i] / ROPE_BASE[i] for i in range(3)])
    return pos.flatten(1).transpose(0, 1)


def rope_tables(grid: Grid, cfg: LTXDiTConfig, scale, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each [f*h*w, dim/2] fp32: one angle per pair of channels of the full (all heads) q/k."""
    pos = rope_positions(grid, cfg, scale, device)
    freqs = ROPE_THETA ** torch.linspace(math.log(1.0, ROPE_THETA), math.log(ROPE_THETA, ROPE_THETA), cfg.dim // 6,
                                         device=device, dtype=torch.float32)
    freqs = freqs * math.pi / 2.0
    angles = freqs * (pos.unsqueeze(-1) * 2 - 1)  # [S, 3 axes, dim//6]
    angles = angles.transpose(-1, -2).flatten(1)  # [S, 3 * (dim//6)]: the axes interleaved per frequency
    pad = (cfg.dim % 6) // 2  # leading pairs left unrotated: angle 0 -> cos 1, sin 0 exactly
    angles = F.pad(angles, (pad, 0))
    return angles.cos(), angles.sin()


def rope_across_heads(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """RoPE on interleaved pairs of the full dim: [B, S, dim] with (cos, sin) [S, dim/2]."""
    return apply_rope(x.unsqueeze(2), *rope).squeeze(2)


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm without affine weights, fp32 statistics, in x's dtype (diffusers' ``RMSNorm``)."""
    return (x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def mlp(in_dim: int, dim: int, act: nn.Module) -> nn.Sequential:
    seq = nn.Sequential()
    seq.fc1 = nn.Linear(in_dim, dim)
    seq.act = act
    seq.fc2 = nn.Linear(dim, dim)
    return seq


def pack_latents(latents: torch.Tensor, cfg: LTXDiTConfig) -> tuple[torch.Tensor, Grid]:
    """[B, C, F, H, W] -> tokens [B, f*h*w, C*pt*p*p] in (frame, height, width) order, features channel-slowest
    (diffusers' ``LTXPipeline._pack_latents``), and the grid (f, h, w)."""
    p, pt = cfg.patch_size, cfg.patch_size_t
    b, c, nf, nh, nw = latents.shape
    grid = (nf // pt, nh // p, nw // p)
    x = latents.reshape(b, c, grid[0], pt, grid[1], p, grid[2], p)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # B, f, h, w, C, pt, p, p
    return x.reshape(b, math.prod(grid), -1), grid


def unpack_tokens(tokens: torch.Tensor, cfg: LTXDiTConfig, grid: Grid) -> torch.Tensor:
    """The inverse of ``pack_latents``: [B, f*h*w, C*pt*p*p] -> [B, C, f*pt, h*p, w*p]."""
    p, pt = cfg.patch_size, cfg.patch_size_t
    f, h, w = grid
    x = tokens.reshape(tokens.shape[0], f, h, w, -1, pt, p, p)
    x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)  # B, C, f, pt, h, p, w, p
    return x.reshape(tokens.shape[0], -1, f * pt, h * p, w * p)


def project(linear: nn.Linear, x: torch.Tensor, bias: bool) -> torch.Tensor:
    """``linear(x)``, or with ``bias=False`` the GEMM alone (the caller's fused kernel adds ``linear.bias``)."""
    return linear(x) if bias else F.linear(x, linear.weight)


# ----------------------------------------------------------------------------------------------
# Attention and block
# ----------------------------------------------------------------------------------------------
class LTXSelfAttention(nn.Module):
    def __init__(self, cfg: LTXDiTConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)  # one GEMM for q, k and v
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.norm_q = RMSNorm(cfg.dim, QK_NORM_EPS)
        self.norm_k = RMSNorm(cfg.dim, QK_NORM_EPS)
        self.attn_op = AttentionOp()
        # the fused path's q/k/v memory: sequence-first (the attention's output then needs no copy before the
        # projection) or heads-first ([B, H, S, D], what cuDNN reads fastest at Wan's head_dim 128); the same numbers.
        # At LTX's 32 heads of 64 sequence-first was faster on an H200 (50.5 vs 51.8 ms eager, BENCHMARKS.md)
        self.heads_first = False

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                key_mask: torch.Tensor | None = None, bias: bool = True) -> torch.Tensor:
        # key_mask [B, S]: only a sequence-parallel plan passes one (its padding at the end of the sequence).
        # bias=False: the output projection's bias is left to the caller's fused kernel (module docstring)
        qkv = self.qkv(x)
        if fused.enabled_for(qkv):  # one launch: split, RMSNorm across heads, RoPE across heads, heads-first q/k/v
            q, k, v = fused.qkv_norm_rope(qkv, self.norm_q.weight, self.norm_k.weight, *rope, self.norm_q.eps,
                                          self.num_heads, heads_first=self.heads_first, rope_dim=qkv.shape[-1] // 3)
            return project(self.proj, self.attn_op(q, k, v, key_mask).flatten(2), bias)
        q, k, v = qkv.chunk(3, dim=-1)
        # norm and RoPE over the full dim, then [B, S, dim] -> [B, S, heads, head_dim]
        q = rope_across_heads(self.norm_q(q), rope).unflatten(-1, (self.num_heads, -1))
        k = rope_across_heads(self.norm_k(k), rope).unflatten(-1, (self.num_heads, -1))
        v = v.unflatten(-1, (self.num_heads, -1))
        return project(self.proj, self.attn_op(q, k, v, key_mask).flatten(2), bias)


class LTXCrossAttention(nn.Module):
    """Attention from video tokens to the projected caption; no RoPE; padded text keys masked out."""

    def __init__(self, cfg: LTXDiTConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.kv = nn.Linear(cfg.dim, 2 * cfg.dim)  # one GEMM for k and v
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.norm_q = RMSNorm(cfg.dim, QK_NORM_EPS)
        self.norm_k = RMSNorm(cfg.dim, QK_NORM_EPS)
        self.attn_op = AttentionOp()

    def forward(self, x: torch.Tensor, text: torch.Tensor, key_mask: torch.Tensor | None,
                bias: bool = True) -> torch.Tensor:
        # on the fused path q's bias is added by its norm's kernel while nothing watches them (module docstring)
        late = fused.enabled_for(x) and fused.unobserved(self.q, self.norm_q)
        q = self.norm_q(project(self.q, x, not late), bias=self.q.bias if late else None)
        k, v = self.kv(text).chunk(2, dim=-1)
        k = self.norm_k(k)
        q, k, v = (t.unflatten(-1, (self.num_heads, -1)) for t in (q, k, v))
        return project(self.proj, self.attn_op(q, k, v, key_mask).flatten(2), bias)


class LTXFeedForward(nn.Module):
    def __init__(self, cfg: LTXDiTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, FFN_MULT * cfg.dim)
        self.fc2 = nn.Linear(FFN_MULT * cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
        return project(self.fc2, fused.linear_gelu_tanh(x, self.fc1.weight, self.fc1.bias), bias)


class LTXBlock(nn.Module):
    def __init__(self, cfg: LTXDiTConfig):
        super().__init__()
        self.eps = cfg.norm_eps
        # learned (shift, scale, gate) x (self-attn, ffn), added to the projected time embedding
        self.modulation = nn.Parameter(torch.randn(6, cfg.dim) / cfg.dim**0.5)
        self.attn = LTXSelfAttention(cfg)
        self.cross_attn = LTXCrossAttention(cfg)
        self.ffn = LTXFeedForward(cfg)

    def table(self, mod: torch.Tensor) -> torch.Tensor:
        """The fused path's modulation table [B, 6, dim] fp32 (``modulation_table``)."""
        return modulation_table(self.modulation, mod)

    def forward(self, x, mod, text, rope, text_mask=None, key_mask=None, ada=None, h=None, next_ada=None):
        """x [B, S, dim] -> x; mod [B, 6, dim] the projected time embedding. Fused path only: ``ada`` this block's
        table made beforehand, ``h`` its first normalized input made by the previous block's last kernel, and with
        ``next_ada`` (the next block's table) the last residual add also makes the next block's ``h``: then the
        block returns (x, h), (x, None) off the fused path. ``LTXDiT.run_blocks`` chains them so."""
        if fused.enabled_for(x):  # the same math in five passes over the tokens (fp32 inside each, one rounding)
            # one fp32 table [B, 6, dim] with 1 added to the scale rows; the kernels read its rows in place.
            # ``ada``: this table made beforehand (LTXDiT.block_tables makes every block's in one pass)
            ada = self.table(mod) if ada is None else ada
            shift1, scale1p, gate1, shift2, scale2p, gate2 = ada.unsqueeze(2).unbind(1)
            # the out projections' biases go to the residual kernels unless a hook watches (module docstring)
            late = fused.unobserved(self.attn, self.attn.proj, self.cross_attn, self.cross_attn.proj, self.ffn,
                                    self.ffn.fc2)
            b_attn, b_cross, b_ffn = ((self.attn.proj.bias, self.cross_attn.proj.bias, self.ffn.fc2.bias) if late
                                      else (None, None, None))
            if h is None:
                h = fused.norm_modulate(x, scale1p, shift1, self.eps, rms=True)
            x = fused.gated_residual(x, self.attn(h, rope, key_mask, bias=not late), gate1, b_attn)
            x, h = fused.residual_norm(x, self.cross_attn(x, text, text_mask, bias=not late), None,
                                       scale2p, shift2, self.eps, rms=True, bias=b_cross)
            if next_ada is None:
                return fused.gated_residual(x, self.ffn(h, bias=not late), gate2, b_ffn)
            # the next block's (shift, 1 + scale) rows: its first norm in this residual add's pass
            return fused.residual_norm(x, self.ffn(h, bias=not late), gate2, next_ada[:, 1:2], next_ada[:, 0:1],
                                       self.eps, rms=True, bias=b_ffn)
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation + mod).unsqueeze(2).unbind(1)

        # 1. self-attention on the modulated, RMS-normalized tokens; gated residual
        x = x + self.attn(rms_norm(x, self.eps) * (1 + scale1) + shift1, rope, key_mask) * gate1

        # 2. cross-attention to the caption, from the residual stream itself (LTX has no norm here); plain residual
        x = x + self.cross_attn(x, text, text_mask)

        # 3. feed-forward on the modulated, RMS-normalized tokens; gated residual
        x = x + self.ffn(rms_norm(x, self.eps) * (1 + scale2) + shift2) * gate2
        return x if next_ada is None else (x, None)  # a chained caller (run_blocks) makes the next h itself


class LTXHead(nn.Module):
    def __init__(self, cfg: LTXDiTConfig):
        super().__init__()
        self.modulation = nn.Parameter(torch.randn(2, cfg.dim) / cfg.dim**0.5)
        self.proj = nn.Linear(cfg.dim, cfg.out_channels)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        # modulated by the unprojected time embedding temb [B, dim]
        shift, scale = (self.modulation + temb[:, None, :]).unsqueeze(2).unbind(1)
        x = F.layer_norm(x, (x.shape[-1],), eps=OUT_NORM_EPS)
        return self.proj(x * (1 + scale) + shift)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------
class LTXDiT(nn.Module):
    """LTX-Video diffusion transformer.

    ``forward(hidden_states [B, f*h*w, in_channels], encoder_hidden_states [B, L, caption_channels], timestep [B],
    encoder_attention_mask [B, L] | None, num_frames=f, height=h, width=w, rope_interpolation_scale=None)
    -> [B, f*h*w, out_channels]``: the semantics of diffusers' ``LTXVideoTransformer3DModel.forward``. The tokens
    are packed latents (``patchify``; LTX's pipeline keeps its latents packed), and (f, h, w) is the token grid.
    The stages (``embed_time``, ``embed_text``, ``rope``, ``blocks``, ``head``) are public so that
    ``runtime.parallel`` can shard the token sequence between them.
    """

    # porting.sources.build_class builds the model from a JSON of these fields (``class:...LTXDiT[@CONFIG.json]``;
    # no config: the 2B model)
    config_class = LTXDiTConfig

    def __init__(self, cfg: LTXDiTConfig):
        super().__init__()
        self.cfg = cfg
        self.proj_in = nn.Linear(cfg.in_channels, cfg.dim)
        self.time_embed = mlp(TIME_FREQ_DIM, cfg.dim, nn.SiLU())
        self.time_proj = nn.Linear(cfg.dim, 6 * cfg.dim)  # adaLN-single: SiLU, then one projection for all blocks
        self.text_embed = mlp(cfg.caption_channels, cfg.dim, nn.GELU(approximate="tanh"))
        self.blocks = nn.ModuleList(LTXBlock(cfg) for _ in range(cfg.num_layers))
        self.head = LTXHead(cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_in.weight.dtype

    def set_attention_backend(self, backend: str, cross_backend: str | None = None) -> None:
        """The kernel of the self-attention and, when given, a different one for the cross-attention
        (``runtime.attention.resolve_backends`` picks the fastest of each; the cross-attention needs a backend
        that takes a key mask when the text is padded)."""
        set_block_attention(self.blocks, backend, cross_backend)

    # --- packing (LTX's pipeline packs its latents once; the DiT sees tokens) ---------------------
    def patchify(self, latents: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        """[B, C, F, H, W] -> (tokens, grid): ``pack_latents``."""
        return pack_latents(latents, self.cfg)

    def unpatchify(self, tokens: torch.Tensor, grid: Grid) -> torch.Tensor:
        """The inverse of ``patchify``: ``unpack_tokens``."""
        return unpack_tokens(tokens, self.cfg, grid)

    # --- stages --------------------------------------------------------------------------------
    def embed_time(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """timestep [B] -> (temb [B, dim], per-block modulation input [B, 6, dim]), in the model's dtype."""
        temb = self.time_embed(timestep_features(timestep.reshape(-1)).to(self.dtype))
        mod = self.time_proj(F.silu(temb))
        return temb, mod.unflatten(1, (6, self.cfg.dim))

    def embed_text(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """[B, L, caption_channels] -> [B, L, dim] (PixArt-alpha's caption projection)."""
        return self.text_embed(encoder_hidden_states.to(self.dtype))

    def rope(self, grid: Grid, rope_interpolation_scale=None, device: torch.device | None = None):
        """(cos, sin) [f*h*w, dim/2] fp32 for the token grid (module docstring)."""
        return rope_tables(grid, self.cfg, rope_interpolation_scale, device or self.proj_in.weight.device)

    def block_tables(self, mod: torch.Tensor) -> list[torch.Tensor | None]:
        """Every block's ``LTXBlock.table`` made in one pass over the stacked tables (four kernels a forward instead
        of three a block; the same numbers); None for each block off the fused path."""
        if not fused.enabled_for(mod):
            return [None] * len(self.blocks)
        tables = torch.stack([b.modulation for b in self.blocks])  # [n, 6, dim]
        return list(modulation_table(tables[:, None], mod[None]).unbind(0))

    def run_blocks(self, x: torch.Tensor, mod: torch.Tensor, text: torch.Tensor, rope, text_mask=None,
                   key_mask=None) -> torch.Tensor:
        """Every block in order (``forward``'s loop, and the sequence-parallel plan's on a shard). On the fused path,
        while no hook watches the blocks, each block's last residual add also makes the next block's normalized
        input (one pass over the tokens fewer a block; the same kernel math)."""
        tables = self.block_tables(mod)
        chain = bool(tables) and tables[0] is not None and fused.unobserved(*self.blocks)
        h = None
        for i, (block, ada) in enumerate(zip(self.blocks, tables)):
            if chain and i + 1 < len(self.blocks):
                x, h = block(x, mod, text, rope, text_mask, key_mask, ada=ada, h=h, next_ada=tables[i + 1])
            else:
                x = block(x, mod, text, rope, text_mask, key_mask, ada=ada, h=h)
        return x

    @staticmethod
    def text_key_mask(encoder_attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """[B, L] (nonzero = a real token) -> the attention's boolean key mask. A sample with no real token
        attends to every key: the reference adds a -10000 bias to masked keys, which then all weigh the same."""
        if encoder_attention_mask is None:
            return None
        mask = encoder_attention_mask.bool()
        return mask | ~mask.any(dim=-1, keepdim=True)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, timestep: torch.Tensor,
                encoder_attention_mask: torch.Tensor | None = None, num_frames: int | None = None,
                height: int | None = None, width: int | None = None, rope_interpolation_scale=None) -> torch.Tensor:
        grid = (num_frames, height, width)
        if None in grid or math.prod(grid) != hidden_states.shape[1]:
            raise ValueError(f"num_frames x height x width = {grid} must give the {hidden_states.shape[1]} tokens "
                             f"of hidden_states {list(hidden_states.shape)}")
        if timestep.numel() != hidden_states.shape[0]:
            raise ValueError(f"timestep has {timestep.numel()} values for a batch of {hidden_states.shape[0]}; "
                             f"give one per sample")
        rope = self.rope(grid, rope_interpolation_scale, hidden_states.device)
        x = self.proj_in(hidden_states.to(self.dtype))
        temb, mod = self.embed_time(timestep)
        text = self.embed_text(encoder_hidden_states)
        text_mask = self.text_key_mask(encoder_attention_mask)
        return self.head(self.run_blocks(x, mod, text, rope, text_mask), temb)
