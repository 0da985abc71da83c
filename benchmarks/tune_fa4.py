"""FlashAttention-4's sm90 forward at Wan's self-attention shape, one row per tile configuration.

    python benchmarks/tune_fa4.py                       # B=1, 32760 tokens, 12 heads, head_dim 128, bf16
    python benchmarks/tune_fa4.py --configs 128x128:rs:ol,128x176:rs:ol --json

flash-attn-4 picks its sm90 tile from a table (128x128, P in registers, intra-warpgroup overlap at
head_dim 128); FA3's C++ table uses 128x176 for the same non-causal case. This times each configuration
given (tile_m x tile_n, ``rs``/``ss`` for where P sits in the PV GEMM, ``ol``/``nool`` for the overlap),
with q, k, v laid out as the DiT passes them (``--v-view``: v a strided view of one [B, S, 3, H, D] qkv
projection, as runtime.kernels.fused.qkv_norm_rope(v_view=True) returns it), and checks each output
against the default configuration's (relative L2). CUDA events, warm-up, median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vidport.runtime.attention import fa4_tile_kwargs  # noqa: E402

from benchmarks.common import median_ms  # noqa: E402

DEFAULT_CONFIGS = "default,128x144:rs:ol,128x160:rs:ol,128x176:rs:ol,128x192:rs:ol,128x176:rs:nool,192x128:rs:nool"


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, default=32760)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--configs", default=DEFAULT_CONFIGS)
    p.add_argument("--layout", choices=["v-view", "contiguous", "both"], default="both")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from flash_attn.cute.interface import _flash_attn_fwd

    s, h, d = args.seq, args.heads, args.head_dim
    flops = 4 * h * s * s * d
    g = torch.Generator("cuda").manual_seed(0)
    qkv = torch.randn(1, s, 3, h, d, device="cuda", dtype=torch.bfloat16, generator=g)
    layouts = {"v-view": (qkv[:, :, 0].contiguous(), qkv[:, :, 1].contiguous(), qkv[:, :, 2]),
               "contiguous": tuple(qkv[:, :, i].contiguous() for i in range(3))}
    names = list(layouts) if args.layout == "both" else [args.layout]
    ref = None
    rows = []
    for config in args.configs.split(","):
        kwargs = fa4_tile_kwargs(config)
        for layout in names:
            q, k, v = layouts[layout]
            row = {"config": config, "layout": layout}
            try:
                out = _flash_attn_fwd(q, k, v, **kwargs)[0]
                if ref is None:
                    ref = out.float()
                row["rel_l2"] = ((out.float() - ref).norm() / ref.norm()).item()
                ms = median_ms(lambda q=q, k=k, v=v, kw=kwargs: _flash_attn_fwd(q, k, v, **kw), warmup=3,
                               repeats=args.repeats)
                row.update(ms=round(ms, 3), tflops=round(flops / ms / 1e9, 1))
            except Exception as exc:  # a configuration the kernel rejects is reported, not fatal
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            rows.append(row)
            print(f"{config:>18} {layout:>10}  " + (f"{row['ms']:8.3f} ms {row['tflops']:7.1f} TFLOP/s "
                  f"rel L2 {row['rel_l2']:.1e}" if "ms" in row else row["error"]), flush=True)
    if args.json:
        print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
