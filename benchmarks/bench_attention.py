"""Every attention backend at Wan 1.3B's self-attention shape: speed, and correctness against sdpa-math.

    python benchmarks/bench_attention.py                 # B=1, 32760 tokens, 12 heads, head_dim 128, bf16
    python benchmarks/bench_attention.py --heads 6       # one rank's share under 2-way Ulysses
    python benchmarks/bench_attention.py --seq-k 512     # the cross-attention shape (512 text tokens)
    python benchmarks/bench_attention.py --json          # machine-readable
    python benchmarks/bench_attention.py --device cpu --seq 2048 --dtype fp32   # smoke run, no GPU

Timing: CUDA events, warm-up, median of ``--repeats``; TFLOP/s = 4*B*H*S*S_k*D / t. Correctness: attention
rows are independent, so the first ``--check-rows`` query rows of each backend's output are compared with
``sdpa-math`` computed in fp32 on those rows against all keys (the full math kernel would materialize a
S x S score matrix per head). A backend is correct when its relative L2 error stays within ``--tolerance``.
The last line says whether ``auto`` (runtime.attention.AUTO_RULES) picks the fastest correct backend.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vidport.runtime import attention  # noqa: E402

from benchmarks.common import median_ms  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def error_vs_math(out: torch.Tensor, ref: torch.Tensor) -> dict:
    diff = out.double() - ref.double()
    return {"max_abs": diff.abs().max().item(), "rel_l2": (diff.norm() / ref.double().norm()).item(),
            "nan": int(torch.isnan(out).sum())}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=32760, help="tokens (Wan 1.3B, 81 frames 480x832: 21*30*52)")
    p.add_argument("--seq-k", type=int, default=None, help="key/value tokens (default: --seq); 512 = cross-attention")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--device", default=None, help="default: cuda when present")
    p.add_argument("--backends", default=None, help="comma-separated; default: every runnable one")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--check-rows", type=int, default=1024)
    p.add_argument("--tolerance", type=float, default=2e-2, help="max relative L2 error vs fp32 sdpa-math")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype]
    names = args.backends.split(",") if args.backends else attention.available_backends(device)
    b, s, h, d = args.batch, args.seq, args.heads, args.head_dim
    sk = args.seq_k or s
    flops = 4 * b * h * s * sk * d

    g = torch.Generator(device).manual_seed(0)
    q = torch.randn(b, s, h, d, device=device, dtype=dtype, generator=g)
    k, v = (torch.randn(b, sk, h, d, device=device, dtype=dtype, generator=g) for _ in range(2))
    rows = min(args.check_rows, s)
    with torch.no_grad():
        ref = attention.sdpa_math(q[:, :rows].float(), k.float(), v.float())

    results = []
    for name in names:
        fn = attention.get_backend(name)
        row = {"backend": name, "shape": [b, s, h, d], "seq_k": sk, "dtype": args.dtype, "device": str(device)}
        # sdpa-math materializes B*H*S^2 scores: at full size it only gets the correctness check, on rows
        too_big = name == "sdpa-math" and device.type == "cuda" and \
            b * h * s * sk * 2 * 4 > 0.5 * torch.cuda.mem_get_info(device)[0]
        try:
            with torch.no_grad():
                out = fn(q[:, :rows], k, v) if too_big else fn(q, k, v)[:, :rows]
                row.update(error_vs_math(out, ref))
                del out
                row["correct"] = row["nan"] == 0 and row["rel_l2"] <= args.tolerance
                if too_big:
                    raise RuntimeError("not timed: materializes the full score matrix (checked on rows only)")
                ms = median_ms(lambda fn=fn: fn(q, k, v), warmup=args.warmup, repeats=args.repeats, device=device)
            row.update(ms=round(ms, 3), tflops=round(flops / ms / 1e9, 2))
        except (RuntimeError, ValueError, ImportError) as e:
            row["error"] = str(e).splitlines()[0][:200]
            row.setdefault("correct", False)
        results.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if not args.json:
            if "ms" in row:
                print(f"{name:15s} {row['ms']:9.2f} ms {row['tflops']:7.1f} TFLOP/s   rel_l2 {row['rel_l2']:.2e} "
                      f"max_abs {row['max_abs']:.2e}  {'ok' if row['correct'] else 'WRONG'}", flush=True)
            else:
                checked = ""
                if "rel_l2" in row:
                    checked = f"rel_l2 {row['rel_l2']:.2e}  {'ok' if row['correct'] else 'WRONG'}  "
                print(f"{name:15s} {checked}{row['error']}", flush=True)

    timed = [r for r in results if r.get("correct") and "ms" in r]
    fastest = min(timed, key=lambda r: r["ms"])["backend"] if timed else None
    auto = attention.resolve_backend("auto", device, dtype, kind="self" if sk == s else "cross")
    times = {r["backend"]: r["ms"] for r in timed}
    # within 3% of the fastest counts: timing noise, and "sdpa" may pick that same kernel itself
    summary = {"auto": auto, "fastest_correct": fastest,
               "auto_is_fastest": fastest is not None and auto in times and times[auto] <= 1.03 * times[fastest]}
    if device.type == "cuda":
        summary["gpu"] = torch.cuda.get_device_name(device)
        summary["capability"] = list(torch.cuda.get_device_capability(device))
    summary["torch"] = torch.__version__
    if args.json:
        print(json.dumps({"results": results, "summary": summary}, indent=2))
    else:
        print(f"auto -> {auto}; fastest correct -> {fastest}; auto is the fastest: {summary['auto_is_fastest']}")
    return results


if __name__ == "__main__":
    main()
