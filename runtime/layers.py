"""Small modules several families' native models share (math only)."""

from __future__ import annotations

import torch
from torch import nn
from vidport.runtime.kernels import fused


class RMSNorm(nn.Module):
    """Affine RMSNorm over the whole last dim (q/k norms across heads), fp32 statistics, one pass on CUDA."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``bias``: x is a projection's output without its bias, added (fp32) before the norm."""
        return fused.rms_norm(x, self.weight, self.eps, bias)


def set_block_attention(blocks, backend: str, cross_backend: str | None = None) -> None:
    """Set the kernel of every block's self-attention (``block.attn.attn_op``) and, when given, a different one
    for its cross-attention (``block.cross_attn.attn_op``); ``runtime.attention.resolve_backends`` picks them."""
    for block in blocks:
        block.attn.attn_op.backend = backend
        block.cross_attn.attn_op.backend = cross_backend or backend
