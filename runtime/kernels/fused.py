"""Fused elementwise kernels for the DiT's hot path (Triton on CUDA, plain PyTorch elsewhere).

Each public function has one PyTorch reference path, used on CPU, in fp32 and whenever Triton is
absent, and a Triton path for bf16/fp16 CUDA tensors that does the same math in one pass over memory:

- ``norm_modulate``: LayerNorm (fp32 statistics) then ``* mul + add`` (the adaLN modulation, or the
  affine weight/bias), cast to the output dtype: one read and one write of the token tensor instead of five.
- ``gated_residual``: ``x + y * gate`` in fp32, cast back.
- ``residual_norm``: a residual add (gated or plain) and the next norm_modulate in one pass: it writes
  both the new residual stream and the normalized tokens, and saves a read of the stream.
  Both residual kernels take an optional ``bias`` of the projection that made ``y`` (``y + bias`` in fp32): a
  model may run that projection as a plain GEMM and leave its bias to them (``unobserved``): cuBLASLt's bias
  epilogue cost 2-8% of the GEMM's time at a 2B DiT's shapes (5280 x 2048 tokens) on an H200 (BENCHMARKS.md).
- ``qkv_norm_rope``: split the fused projection; RMSNorm across heads + RoPE for q and k; one launch.
- ``rms_norm``: RMSNorm in one pass (the cross-attention's q/k norms).
- ``linear_gelu_tanh``: the FFN's first projection with GELU(tanh) in the GEMM epilogue (cuBLASLt).

The token stream ``x`` may be fp32 while the GEMMs run in bf16 (the DiT's ``official`` precision): the
norms then take ``out_dtype`` (the GEMMs' dtype) and the residual adds keep ``x``'s dtype; the Triton path
runs whenever one side is bf16/fp16 (it loads in fp32 and stores in each output's own dtype).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # Triton ships with CUDA builds of PyTorch; CPU builds have none
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None


HALF = (torch.bfloat16, torch.float16)


def enabled_for(x: torch.Tensor, dtype: torch.dtype | None = None) -> bool:
    """True when the Triton path runs for x computing into ``dtype`` (default x's): CUDA, Triton installed,
    and x or the output in bf16/fp16."""
    return _use_triton(x, dtype)


def _launcher(op, launch):
    """The custom op under torch.compile (which calls it as it is), the plain Triton launch in eager mode: the
    op's dispatch costs more host time than its kernel takes on a GPU at a few thousand tokens, and a DiT forward
    makes ~150 such calls (a 2B DiT at 5280 tokens went host-bound: 93 ms of wall for 46 ms of kernels)."""
    return op if torch.compiler.is_compiling() else launch


# Under torch.compile: True runs the kernels as opaque custom ops; False lets inductor trace and fuse the
# reference math itself (benchmarks/bench_ltx.py times both).
KERNELS_UNDER_COMPILE = True


def _use_triton(x: torch.Tensor, other: torch.dtype | None = None) -> bool:
    if not KERNELS_UNDER_COMPILE and torch.compiler.is_compiling():
        return False
    return triton is not None and x.is_cuda and (x.dtype in HALF or other in HALF)


# ----------------------------------------------------------------------------------------------
# reference paths (the math, exactly as the model defines it)
# ----------------------------------------------------------------------------------------------
def _norm_modulate_ref(x, mul, add, eps, out_dtype=None, rms=False):
    norm = F.rms_norm if rms else F.layer_norm
    return (norm(x.float(), (x.shape[-1],), eps=eps) * mul + add).to(out_dtype or x.dtype)


def _gated_residual_ref(x, y, gate, bias=None):
    return (x.float() + _with_bias(y, bias) * gate).type_as(x)


def _with_bias(y, bias):
    """y in fp32, plus the projection's bias when it was left out of the GEMM."""
    return y.float() if bias is None else y.float() + bias.float()


def unobserved(*modules) -> bool:
    """True when no hook watches any of these modules (nor a global module hook): a model may then skip their
    calls or leave part of their outputs to a later fused kernel (e.g. a projection's bias) without anyone seeing
    an intermediate that differs from the reference's. Parity captures hook every module. Name every module whose
    output (or call) the shortcut changes; their children are not searched (a few dict checks a block)."""
    from torch.nn.modules import module as _module

    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in modules)


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
def norm_modulate(x: torch.Tensor, mul: torch.Tensor, add: torch.Tensor, eps: float,
                  out_dtype: torch.dtype | None = None, rms: bool = False) -> torch.Tensor:
    """(LayerNorm(x) * mul + add) in fp32, returned in ``out_dtype`` (default x's). x [B, S, C]; mul, add
    [B|1, 1, C] fp32. ``rms``: RMSNorm (no centering) instead of LayerNorm."""
    out_dtype = out_dtype or x.dtype
    if not _use_triton(x, out_dtype):
        return _norm_modulate_ref(x, mul, add, eps, out_dtype, rms)
    return _launcher(_norm_modulate_op, _norm_modulate_launch)(x, mul, add, eps, out_dtype, rms)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """x + y * gate computed in fp32, in x's dtype. x, y [B, S, C]; gate [B, 1, C] fp32. ``bias`` [C]: y is a
    projection's output without its bias; x + (y + bias) * gate."""
    if not _use_triton(x, y.dtype):
        return _gated_residual_ref(x, y, gate, bias)
    return _launcher(_gated_residual_op, _gated_residual_launch)(x, y, gate, bias)


def residual_norm(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, mul: torch.Tensor,
                  add: torch.Tensor, eps: float, out_dtype: torch.dtype | None = None, rms: bool = False,
                  bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x', norm_modulate(x', mul, add, eps, out_dtype)) with x' = x + y * gate (fp32 math) or, when ``gate``
    is None, x' = x + y (rounded to x's dtype, as a plain residual add). x, y [B, S, C]; gate, mul, add
    [B|1, 1, C] fp32. x' keeps x's dtype; the normalized tokens are in ``out_dtype`` (default x's). ``rms``:
    RMSNorm instead of LayerNorm. ``bias`` [C]: y is a projection's output without its bias, added in fp32."""
    out_dtype = out_dtype or x.dtype
    if not _use_triton(x, out_dtype):
        if gate is not None:
            x = _gated_residual_ref(x, y, gate, bias)
        else:
            x = (x + y).to(x.dtype) if bias is None else (x.float() + _with_bias(y, bias)).to(x.dtype)
        return x, _norm_modulate_ref(x, mul, add, eps, out_dtype, rms)
    return _launcher(_residual_norm_op, _residual_norm_launch)(x, y, gate, mul, add, eps, out_dtype, rms, bias)


def qkv_norm_rope(qkv: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  eps: float, num_heads: int, heads_first: bool = True, v_view: bool = False,
                  rope_dim: int | None = None):
    """Split a fused projection [B, S, 3C] into q, k, v, each [B, S, H, D]; RMSNorm across heads then RoPE
    on interleaved pairs for q and k (cos/sin [S, D/2] fp32).

    The Triton path does it in one launch and, with ``heads_first``, stores [B, H, S, D] memory (returned
    as [B, S, H, D] views): cuDNN attention runs faster on that layout than on views of the projection.
    With ``v_view`` the kernel writes only q and k, and v is a strided view of the projection (saves a
    copy of v; sequence-first only). ``rope_dim``: the channels one RoPE table row rotates: the head dim D
    (default: cos/sin [S, D/2], each head rotated alike) or the full dim C (cos/sin [S, C/2]: RoPE across
    heads, as a model that rotates before splitting the heads applies it).
    """
    if v_view and heads_first:
        raise ValueError("qkv_norm_rope: v_view returns v as a view of the projection, which is sequence-first; "
                         "use heads_first=False with it")
    C = qkv.shape[-1] // 3
    rope_dim = rope_dim or C // num_heads
    if not _use_triton(qkv):
        q, k, v = qkv.chunk(3, dim=-1)
        heads = num_heads if rope_dim != C else 1  # RoPE across heads: rotate the whole row, then split
        q = apply_rope(rms_norm(q, w_q, eps).unflatten(-1, (heads, -1)), cos, sin)
        k = apply_rope(rms_norm(k, w_k, eps).unflatten(-1, (heads, -1)), cos, sin)
        return q.flatten(2).unflatten(-1, (num_heads, -1)), k.flatten(2).unflatten(-1, (num_heads, -1)), \
            v.unflatten(-1, (num_heads, -1))
    out = _launcher(_qkv_norm_rope_op, _qkv_norm_rope_launch)(qkv, w_q, w_k, cos, sin, eps, num_heads, heads_first,
                                                               2 if v_view else 3, rope_dim)
    if heads_first:
        out = out.transpose(2, 3)
    return out[0], out[1], (qkv[..., 2 * C:].unflatten(-1, (num_heads, -1)) if v_view else out[2])


# ----------------------------------------------------------------------------------------------
# the Triton launches, as custom ops: torch.compile calls them as they are. Traced as user Triton kernels
# instead, they ran 15-40% slower inside a compiled block on an H100 (BENCHMARKS.md).
# ----------------------------------------------------------------------------------------------
def _vec(v: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A [B|1, 1, C] vector as fp32 with unit channel stride, and its batch stride (0: one row for every sample).
    Slices of a [B, k, C] modulation table pass as they are (no copy)."""
    v = v.float()
    if v.stride(-1) != 1:
        v = v.contiguous()
    return v, (v.stride(0) if v.shape[0] > 1 else 0)


def _norm_modulate_launch(x: torch.Tensor, mul: torch.Tensor, add: torch.Tensor, eps: float,
                          out_dtype: torch.dtype, rms: bool = False) -> torch.Tensor:
    B, S, C = x.shape
    x = x.contiguous()
    (mul, ms), (add, as_) = _vec(mul), _vec(add)
    out = torch.empty_like(x, dtype=out_dtype)
    _norm_modulate_kernel[(B * S,)](x, mul, add, out, S, C, ms, as_, eps, RMS=rms, BLOCK=triton.next_power_of_2(C),
                                    num_warps=8)
    return out


_norm_modulate_op = torch.library.custom_op("vidport::norm_modulate", mutates_args=())(_norm_modulate_launch)


def _gated_residual_launch(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor,
                           bias: torch.Tensor | None = None) -> torch.Tensor:
    B, S, C = x.shape
    x, y = x.contiguous(), y.contiguous()
    gate, gs = _vec(gate)
    out = torch.empty_like(x)
    _gated_residual_kernel[(B * S,)](x, y, gate, gate if bias is None else bias.contiguous(), out, S, C, gs,
                                     HAS_BIAS=bias is not None, BLOCK=triton.next_power_of_2(C), num_warps=8)
    return out


_gated_residual_op = torch.library.custom_op("vidport::gated_residual", mutates_args=())(_gated_residual_launch)


def _residual_norm_launch(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, mul: torch.Tensor,
                          add: torch.Tensor, eps: float, out_dtype: torch.dtype, rms: bool = False,
                          bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    B, S, C = x.shape
    x, y = x.contiguous(), y.contiguous()
    (mul, ms), (add, as_) = _vec(mul), _vec(add)
    g, gs = (mul, ms) if gate is None else _vec(gate)
    new_x, out = torch.empty_like(x), torch.empty_like(x, dtype=out_dtype)
    _residual_norm_kernel[(B * S,)](x, y, g, mul if bias is None else bias.contiguous(), mul, add, new_x, out, S, C,
                                    gs, ms, as_, eps, HAS_GATE=gate is not None, HAS_BIAS=bias is not None, RMS=rms,
                                    BLOCK=triton.next_power_of_2(C), num_warps=8)
    return new_x, out


_residual_norm_op = torch.library.custom_op("vidport::residual_norm", mutates_args=())(_residual_norm_launch)


def _qkv_norm_rope_launch(qkv: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, cos: torch.Tensor,
                          sin: torch.Tensor, eps: float, num_heads: int, heads_first: bool, segments: int,
                          rope_dim: int = 0) -> torch.Tensor:
    """One [segments, B, S, H, D] (or [segments, B, H, S, D] heads-first) buffer: q, k and (segments 3) v."""
    B, S, C3 = qkv.shape
    C = C3 // 3
    D = C // num_heads
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    out = torch.empty(_qkv_shape(qkv, num_heads, heads_first, segments), dtype=qkv.dtype, device=qkv.device)
    # q's and k's norm weights are read in their own dtype by the kernel (no host-side casts or stacking)
    # one program a token for q and k (their RoPE row read once: across heads it spans the full dim, 8 KB of fp32
    # a token at dim 2048),
    # and with v one more that copies it
    _qkv_norm_rope_kernel[(B * S, segments - 1)](
        qkv, qkv.stride(0), qkv.stride(1), w_q.contiguous(), w_k.contiguous(), cos.contiguous(), sin.contiguous(), out,
        B, S, C, D, rope_dim or D, eps,
        HEADS_FIRST=heads_first, BLOCK=triton.next_power_of_2(C), num_warps=8)
    return out


_qkv_norm_rope_op = torch.library.custom_op("vidport::qkv_norm_rope", mutates_args=())(_qkv_norm_rope_launch)


def _qkv_shape(qkv, num_heads, heads_first, segments):
    B, S, C3 = qkv.shape
    D = C3 // 3 // num_heads
    return (segments, B, num_heads, S, D) if heads_first else (segments, B, S, num_heads, D)


@_norm_modulate_op.register_fake
def _(x, mul, add, eps, out_dtype, rms=False):
    return torch.empty_like(x, dtype=out_dtype, memory_format=torch.contiguous_format)


@_gated_residual_op.register_fake
def _(x, y, gate, bias=None):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@_residual_norm_op.register_fake
def _(x, y, gate, mul, add, eps, out_dtype, rms=False, bias=None):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, dtype=out_dtype, memory_format=torch.contiguous_format))


@_qkv_norm_rope_op.register_fake
def _(qkv, w_q, w_k, cos, sin, eps, num_heads, heads_first, segments, rope_dim=0):
    return qkv.new_empty(_qkv_shape(qkv, num_heads, heads_first, segments))


def rms_norm(t: torch.Tensor, weight: torch.Tensor, eps: float, bias: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm with fp32 statistics over the last dim, output in t's dtype (one pass on CUDA). ``bias`` [C]: t is a
    projection's output without its bias; the norm of (t + bias), added in fp32."""
    if not _use_triton(t):
        return F.rms_norm(_with_bias(t, bias), (t.shape[-1],), weight.float(), eps).type_as(t)
    return _launcher(_rms_norm_op, _rms_norm_launch)(t, weight, eps, bias)


def _rms_norm_launch(t: torch.Tensor, weight: torch.Tensor, eps: float,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    C = t.shape[-1]
    t2 = t.reshape(-1, C)  # a view where the rows are evenly strided (k of a fused k/v projection: rows of 2C)
    if t2.stride(-1) != 1:
        t2 = t2.contiguous()
    out = torch.empty(t.shape, dtype=t.dtype, device=t.device)  # contiguous rows of C
    w = weight.contiguous()  # read in its dtype
    _rms_norm_kernel[(t2.shape[0],)](t2, w, w if bias is None else bias.contiguous(), out, C, t2.stride(0), eps,
                                     HAS_BIAS=bias is not None, BLOCK=triton.next_power_of_2(C), num_warps=8)
    return out


_rms_norm_op = torch.library.custom_op("vidport::rms_norm", mutates_args=())(_rms_norm_launch)


@_rms_norm_op.register_fake
def _(t, weight, eps, bias=None):
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x [B, S, H, D] by each token's angles (fp32 math)."""
    xf = x.float().unflatten(-1, (-1, 2))  # [B, S, H, D/2, 2]
    x1, x2 = xf[..., 0], xf[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2).type_as(x)


def linear_gelu_tanh(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """GELU(tanh)(x @ W^T + b); on CUDA the activation runs in the cuBLASLt epilogue."""
    if not _use_triton(x):
        return F.gelu(F.linear(x, weight, bias), approximate="tanh")
    out = _launcher(_addmm_gelu, _addmm_gelu_eager)(bias, x.reshape(-1, x.shape[-1]), weight)
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _addmm_gelu_eager(bias: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch._addmm_activation(bias, x, weight.t(), use_gelu=True)


# A custom op: torch.compile would otherwise decompose _addmm_activation into a GEMM and a separate GELU
# pass over the [tokens, ffn_dim] activation (an extra read and write of ~590 MB per block at 32760 tokens).
@torch.library.custom_op("vidport::addmm_gelu_tanh", mutates_args=())
def _addmm_gelu(bias: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch._addmm_activation(bias, x, weight.t(), use_gelu=True)


@_addmm_gelu.register_fake
def _(bias, x, weight):
    return x.new_empty(x.shape[0], weight.shape[0])


# ----------------------------------------------------------------------------------------------
# Triton kernels: one program per token row
# ----------------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _store_norm_modulate(x, m, mul_ptrs, add_ptrs, out_ptrs, C, eps, RMS: tl.constexpr):
        """One fp32 row x (masked by m): LayerNorm (or, with RMS, RMSNorm) statistics in fp32, then * mul + add,
        stored."""
        if RMS:
            xc = x
        else:
            mean = tl.sum(x, axis=0) / C
            xc = tl.where(m, x - mean, 0.0)
        var = tl.sum(xc * xc, axis=0) / C
        y = xc * tl.rsqrt(var + eps)
        mul = tl.load(mul_ptrs, mask=m, other=0.0)
        add = tl.load(add_ptrs, mask=m, other=0.0)
        tl.store(out_ptrs, (y * mul + add).to(out_ptrs.dtype.element_ty), mask=m)

    @triton.jit
    def _norm_modulate_kernel(x_ptr, mul_ptr, add_ptr, out_ptr, S, C, MS, AS, eps, RMS: tl.constexpr,
                              BLOCK: tl.constexpr):
        row = tl.program_id(0)
        b = row // S
        cols = tl.arange(0, BLOCK)
        m = cols < C
        x = tl.load(x_ptr + row * C + cols, mask=m, other=0.0).to(tl.float32)
        _store_norm_modulate(x, m, mul_ptr + b * MS + cols, add_ptr + b * AS + cols, out_ptr + row * C + cols, C,
                             eps, RMS)

    @triton.jit
    def _gated_residual_kernel(x_ptr, y_ptr, g_ptr, bias_ptr, out_ptr, S, C, GS, HAS_BIAS: tl.constexpr,
                               BLOCK: tl.constexpr):
        row = tl.program_id(0)
        b = row // S
        cols = tl.arange(0, BLOCK)
        m = cols < C
        x = tl.load(x_ptr + row * C + cols, mask=m, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + row * C + cols, mask=m, other=0.0).to(tl.float32)
        if HAS_BIAS:  # the projection's bias, left out of its GEMM
            y += tl.load(bias_ptr + cols, mask=m, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + b * GS + cols, mask=m, other=0.0)
        tl.store(out_ptr + row * C + cols, (x + y * g).to(out_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _residual_norm_kernel(x_ptr, y_ptr, g_ptr, bias_ptr, mul_ptr, add_ptr, new_x_ptr, out_ptr, S, C, GS, MS, AS,
                              eps, HAS_GATE: tl.constexpr, HAS_BIAS: tl.constexpr, RMS: tl.constexpr,
                              BLOCK: tl.constexpr):
        row = tl.program_id(0)
        b = row // S
        cols = tl.arange(0, BLOCK)
        m = cols < C
        x = tl.load(x_ptr + row * C + cols, mask=m, other=0.0)
        y = tl.load(y_ptr + row * C + cols, mask=m, other=0.0).to(tl.float32)
        if HAS_BIAS:  # the projection's bias, left out of its GEMM
            y += tl.load(bias_ptr + cols, mask=m, other=0.0).to(tl.float32)
        if HAS_GATE:  # fp32 math, one rounding
            g = tl.load(g_ptr + b * GS + cols, mask=m, other=0.0)
            x = (x.to(tl.float32) + y * g).to(new_x_ptr.dtype.element_ty)
        else:  # a plain add in the tensor dtype, as the reference does
            x = (x.to(tl.float32) + y).to(new_x_ptr.dtype.element_ty)
        tl.store(new_x_ptr + row * C + cols, x, mask=m)
        # the norm reads the rounded stream, as the reference does
        _store_norm_modulate(x.to(tl.float32), m, mul_ptr + b * MS + cols, add_ptr + b * AS + cols,
                             out_ptr + row * C + cols, C, eps, RMS)

    @triton.jit
    def _qkv_norm_rope_kernel(t_ptr, stride_b, stride_s, wq_ptr, wk_ptr, cos_ptr, sin_ptr, out_ptr, B, S, C, D, R, eps,
                              HEADS_FIRST: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        part = tl.program_id(1)  # 0: q and k (the token's RoPE row read once for both), 1: v
        b = row // S
        s = row % S
        cols = tl.arange(0, BLOCK)
        m = cols < C
        src = t_ptr + b * stride_b + s * stride_s + cols
        H = C // D
        if HEADS_FIRST:  # element c of the row is head c // D, channel c % D
            dst = out_ptr + ((b * H + cols // D) * S + s) * D + cols % D
        else:
            dst = out_ptr + row * C + cols
        if part == 0:
            i = tl.arange(0, BLOCK // 2)
            p = i % (R // 2)  # R: the channels one table row rotates (D per head, or C across heads)
            pm = i < C // 2
            c = tl.load(cos_ptr + s * (R // 2) + p, mask=pm, other=0.0)
            sn = tl.load(sin_ptr + s * (R // 2) + p, mask=pm, other=0.0)
            for seg in tl.static_range(2):  # q, then k
                x = tl.load(src + seg * C, mask=m, other=0.0).to(tl.float32)
                r = tl.rsqrt(tl.sum(x * x, axis=0) / C + eps)
                if seg == 0:
                    w = tl.load(wq_ptr + cols, mask=m, other=0.0).to(tl.float32)
                else:
                    w = tl.load(wk_ptr + cols, mask=m, other=0.0).to(tl.float32)
                # round to the tensor dtype after the norm, as the reference path does
                x = (x * r * w).to(out_ptr.dtype.element_ty).to(tl.float32)
                x1, x2 = tl.split(tl.reshape(x, (BLOCK // 2, 2)))  # interleaved pairs
                y = tl.reshape(tl.join(x1 * c - x2 * sn, x1 * sn + x2 * c), (BLOCK,))
                tl.store(dst + seg * B * S * C, y.to(out_ptr.dtype.element_ty), mask=m)
        else:
            v = tl.load(src + 2 * C, mask=m, other=0.0)
            tl.store(dst + 2 * B * S * C, v.to(out_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _rms_norm_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, C, stride_x, eps, HAS_BIAS: tl.constexpr,
                         BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        m = cols < C
        x = tl.load(x_ptr + row * stride_x + cols, mask=m, other=0.0).to(tl.float32)
        if HAS_BIAS:  # the projection's bias, left out of its GEMM
            x += tl.load(bias_ptr + cols, mask=m, other=0.0).to(tl.float32)
        r = tl.rsqrt(tl.sum(x * x, axis=0) / C + eps)
        w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * C + cols, (x * r * w).to(out_ptr.dtype.element_ty), mask=m)
