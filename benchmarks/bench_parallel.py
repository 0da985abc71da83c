"""Sequence-parallel (Ulysses) and CFG-parallel Wan DiT on N GPUs over NCCL: correctness against one
GPU, and time per forward / per guided step.

    python benchmarks/bench_parallel.py --num-gpus 2                  # 1.3B, 81 frames 480x832, bf16
    python benchmarks/bench_parallel.py --num-gpus 4 --cfg-parallel   # 2 branches x 2-way Ulysses
    python benchmarks/bench_parallel.py --num-gpus 2 --device cpu --preset tiny --grid 3,10,10   # smoke

Every rank builds the same seeded DiT (random weights) and inputs. Rank 0 first runs the plain model
alone (the 1-GPU reference and its time), then all ranks run the parallel one. Times are medians of CUDA
events; the report is JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vidport.runtime.loading import cast_native  # noqa: E402
from vidport.runtime.models.wan.config import preset  # noqa: E402
from vidport.runtime.models.wan.model import WanDiT  # noqa: E402
from vidport.runtime.models.wan.parallel import parallelize_wan  # noqa: E402
from vidport.runtime.parallel import launch, parallelize  # noqa: E402
from vidport.runtime.parallel.generator import resolve_backends_on_ranks  # noqa: E402
from vidport.runtime.pipeline.guidance import SerialCFG  # noqa: E402
from vidport.runtime.pipeline.state import Conditioning  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def timed(fn, device, warmup, repeats) -> tuple[torch.Tensor, float]:
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return out, statistics.median(times) * 1e3


def _rank(worker, args):
    device, dtype = worker.device, DTYPES[args.dtype]
    cfg = preset(args.preset)
    torch.manual_seed(0)
    with torch.device(device):
        model = cast_native(WanDiT(cfg), "wan2.1-t2v", dtype, cfg.to_diffusers()).eval().requires_grad_(False)
        g = torch.Generator(device).manual_seed(1)
        f, h, w = args.grid
        x = torch.randn(1, cfg.in_dim, f, 2 * h, 2 * w, generator=g, device=device)
        t = torch.tensor([700.0], device=device)
        # the pipeline's conditionings: the DiT's keyword arguments (runtime.pipeline.state.Conditioning)
        cond, uncond = (Conditioning({"context": torch.randn(1, cfg.text_len, cfg.text_dim, generator=g,
                                                             device=device).to(dtype)}) for _ in range(2))
    backends = resolve_backends_on_ranks(args.attention_backend, device, dtype, cfg.head_dim)  # as the runtime
    model.set_attention_backend(*backends)
    report = {"rank": worker.rank, "world": worker.world_size, "tokens": f * h * w, "attention_backends": backends}

    def step(m, strategy):
        with torch.no_grad():
            return strategy(m, x.to(dtype), t, cond, uncond, 5.0)

    if worker.rank == 0:  # the 1-GPU reference, alone
        want, report["one_gpu_step_ms"] = timed(lambda: step(model, SerialCFG()), device, args.warmup, args.repeats)
    dist.barrier()
    dit, strategy = parallelize(model, parallelize_wan, cfg_parallel=args.cfg_parallel)
    got, report["parallel_step_ms"] = timed(lambda: step(dit, strategy or SerialCFG()), device, args.warmup,
                                            args.repeats)
    if worker.rank == 0:
        diff = got.double() - want.double()
        report.update(max_abs=diff.abs().max().item(), rel_l2=(diff.norm() / want.double().norm()).item(),
                      speedup=report["one_gpu_step_ms"] / report["parallel_step_ms"])
        if device.type == "cuda":
            report["gpu"] = torch.cuda.get_device_name(device)
            report["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return report


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-gpus", type=int, default=2)
    p.add_argument("--cfg-parallel", action="store_true")
    p.add_argument("--preset", default="1.3b")
    p.add_argument("--grid", default="21,30,52", help="latent tokens f,h,w (81 frames 480x832: 21,30,52)")
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--attention-backend", default="sdpa", help="a runtime.attention backend, or auto")
    p.add_argument("--device", default=None)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    args.grid = tuple(int(n) for n in args.grid.split(","))
    report = launch(_rank, args.num_gpus, args, device=args.device)
    if report is None:  # under torchrun, a rank other than 0
        return {}
    report.update(cfg_parallel=args.cfg_parallel, preset=args.preset, dtype=args.dtype,
                  attention_backend=args.attention_backend, step="guided step = 2 DiT forwards (cond + uncond)")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
