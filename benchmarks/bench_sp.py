"""Sequence-parallel (Ulysses) scaling of the Wan DiT forward over 1..N GPUs of one host.

    python benchmarks/bench_sp.py --world-sizes 1,2,4          # 1.3B, 81x480x832, bf16, NCCL
    python benchmarks/bench_sp.py --world-sizes 1,2 --device cpu --preset tiny --frames 5 --height 32 --width 48

Every world size runs in its own set of ranks started by ``runtime.parallel.WorkerPool``; every rank
builds the same seeded weights and inputs, applies ``parallelize_wan`` (also at world size 1, so the
collectives run), times the forward with CUDA events, and rank 0 returns its output, which is compared
with the world-size-1 output. Keep NCCL_NVLS_ENABLE=0 on multi-GPU hosts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import compare, table  # noqa: E402

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")


def _rank_forward(worker, preset_name: str, latent: tuple[int, int, int], repeats: int):
    import torch.distributed as dist
    from vidport.runtime.loading import cast_native
    from vidport.runtime.models.wan.config import preset
    from vidport.runtime.models.wan.model import WanDiT
    from vidport.runtime.models.wan.parallel import parallelize_wan
    from vidport.runtime.parallel.generator import resolve_backends_on_ranks

    cfg = preset(preset_name)
    dev = worker.device
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    torch.manual_seed(0)
    # same seeded weights on every rank, cast as the loader casts
    model = cast_native(WanDiT(cfg), "wan2.1-t2v", dtype, cfg.to_diffusers()).to(dev).eval().requires_grad_(False)
    model.set_attention_backend(*resolve_backends_on_ranks("auto", dev, dtype))  # rank 0's choice, on every rank
    sp = parallelize_wan(model)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, cfg.in_dim, *latent, generator=g).to(dev, dtype)
    t = torch.tensor([500.0], device=dev)
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g).to(dev, dtype)
    times = []
    with torch.no_grad():
        for i in range(repeats + 2):
            dist.barrier()
            if dev.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = sp(x, t, ctx)
                end.record()
                torch.cuda.synchronize(dev)
                ms = start.elapsed_time(end)
            else:
                t0 = time.perf_counter()
                out = sp(x, t, ctx)
                ms = 1000 * (time.perf_counter() - t0)
            if i >= 2:
                times.append(ms)
    # the slowest rank sets the pace
    ms = torch.tensor([statistics.median(times)], device=dev)
    dist.all_reduce(ms, op=dist.ReduceOp.MAX)
    return {"ms": ms.item(), "out": out.float().cpu() if worker.is_main else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world-sizes", default="1,2,4")
    ap.add_argument("--preset", default="1.3b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from vidport.runtime.parallel import launch

    latent = ((args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    sizes = [int(s) for s in args.world_sizes.split(",")]
    results = {}
    for n in sizes:
        results[n] = launch(_rank_forward, n, args.preset, latent, args.repeats, device=args.device)
        print(f"world size {n}: {results[n]['ms']:.1f} ms / forward", flush=True)
    base = results[sizes[0]]
    rows = []
    for n in sizes:
        c = compare(results[n]["out"], base["out"])
        rows.append([n, f"{results[n]['ms']:.1f}", f"{base['ms'] / results[n]['ms']:.2f}x",
                     f"{c['max_abs']:.2e}", f"{c['rel_l2']:.2e}"])
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"# {name} x{max(sizes)}, torch {torch.__version__}, Wan {args.preset}, "
          f"{args.frames}x{args.height}x{args.width}")
    print(table(rows, ["ranks", "ms / forward", f"speedup vs {sizes[0]}", "max abs vs base", "rel L2 vs base"]))


if __name__ == "__main__":
    main()
