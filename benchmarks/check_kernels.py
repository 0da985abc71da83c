"""Check the Triton kernels against their PyTorch reference paths on random CUDA inputs.

    python benchmarks/check_kernels.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.kernels import fused  # noqa: E402
from runtime.models.wan.config import preset  # noqa: E402
from runtime.models.wan.model import rope_tables  # noqa: E402


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main() -> None:
    assert fused.triton is not None, "no Triton here"
    torch.manual_seed(0)
    B, S, C, H = 2, 3000, 1536, 12
    dev, bf = "cuda", torch.bfloat16
    x = torch.randn(B, S, C, device=dev).to(bf)
    mul = 1 + 0.1 * torch.randn(B, 1, C, device=dev)
    add = 0.1 * torch.randn(B, 1, C, device=dev)
    results = {}
    results["norm_modulate"] = rel(fused.norm_modulate(x, mul, add, 1e-6), fused._norm_modulate_ref(x, mul, add, 1e-6))
    y = torch.randn(B, S, C, device=dev).to(bf)
    results["gated_residual"] = rel(fused.gated_residual(x, y, add), fused._gated_residual_ref(x, y, add))
    qkv = torch.randn(B, S, 3 * C, device=dev).to(bf)
    w = 1 + 0.1 * torch.randn(C, device=dev)
    wk = 1 + 0.1 * torch.randn(C, device=dev)
    cos, sin = rope_tables((3, 20, 50), preset("1.3b"), torch.device(dev))
    q, k, v = qkv.chunk(3, dim=-1)
    want = [fused.apply_rope(F.rms_norm(t.float(), (C,), ww, 1e-6).to(bf).unflatten(-1, (H, -1)), cos, sin)
            for t, ww in ((q, w), (k, wk))] + [v.unflatten(-1, (H, -1))]
    for heads_first in (True, False):
        got = fused.qkv_norm_rope(qkv, w, wk, cos, sin, 1e-6, H, heads_first=heads_first)
        for name, g_, w_ in zip("qkv", got, want):
            results[f"qkv_norm_rope[{name}, heads_first={heads_first}]"] = rel(g_, w_)
    results["rms_norm"] = rel(fused.rms_norm(x, w, 1e-6), F.rms_norm(x.float(), (C,), w, 1e-6).to(bf))
    W = torch.randn(8960, C, device=dev).to(bf) / C**0.5
    bias = 0.02 * torch.randn(8960, device=dev).to(bf)
    results["linear_gelu_tanh"] = rel(fused.linear_gelu_tanh(x, W, bias),
                                      F.gelu(F.linear(x, W, bias), approximate="tanh"))
    ok = True
    for k, v in results.items():
        flag = v < 1e-2 and v == v
        ok &= flag
        print(f"kernel {k}: rel L2 vs reference {v:.2e} {'ok' if flag else 'FAIL'}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
