"""cuDNN / flash SDPA at Wan 1.3B's self-attention shape, by memory layout of q, k, v.

    python benchmarks/attention_layouts.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import median_ms  # noqa: E402


def main(S: int = 32760, H: int = 12, D: int = 128) -> None:
    flops = 4 * H * S * S * D
    dev, bf = "cuda", torch.bfloat16
    qkv = torch.randn(1, S, 3 * H * D, device=dev, dtype=bf)
    layouts = {
        "BSHD views of fused qkv": [t.unflatten(-1, (H, D)).transpose(1, 2) for t in qkv.chunk(3, -1)],
        "BSHD contiguous": [torch.randn(1, S, H, D, device=dev, dtype=bf).transpose(1, 2) for _ in range(3)],
        "BHSD contiguous": [torch.randn(1, H, S, D, device=dev, dtype=bf) for _ in range(3)],
    }
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
        for name, (q, k, v) in layouts.items():
            with sdpa_kernel([backend]):
                try:
                    ms = median_ms(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v))
                    print(f"{backend.name:16s} {name:26s} {ms:7.2f} ms {flops / ms / 1e9:6.0f} TFLOP/s", flush=True)
                except RuntimeError as e:
                    print(f"{backend.name:16s} {name:26s} failed: {str(e).splitlines()[0]}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=32760, help="tokens (Wan 1.3B, 81 frames 480x832: 21*30*52)")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=128)
    args = ap.parse_args()
    main(args.seq, args.heads, args.head_dim)
