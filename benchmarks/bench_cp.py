"""Multi-GPU Wan DiT forward on one host: vidport's Ulysses (and CFG-parallel x Ulysses) against diffusers'
own context parallelism (``enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))``).

    python benchmarks/bench_cp.py --world-sizes 1,2,4 --json out/cp.json    # 1.3B, 81x480x832, bf16, NCCL
    python benchmarks/bench_cp.py --world-sizes 1,2,4 --device cpu --preset tiny --frames 5 --height 32 --width 64

One launch of N ranks (``runtime.parallel.launch``) per world size N; the first must be 1. On every rank:
diffusers' ``WanTransformer3DModel`` with its own random init (seed 0, then broadcast from rank 0, so every
rank holds the same weights), the native ``WanDiT`` loaded from it through the committed map (as
bench_dit.py), and the same seeded inputs. vidport runs ``parallelize(model, parallelize_wan)`` with ``auto``
attention resolved as the runtime does (``resolve_backends_on_ranks``) and, where they differ, with SDPA's
own dispatch and with cuDNN; diffusers runs its default backend (``native``: torch SDPA's dispatch) and
``_native_cudnn``. vidport's rows use its default pipelined exchange (``DistributedAttention``: the q/k/v and
output all-to-alls in head groups, each group attending while the next travels); ``--ulysses-chunks`` times other
group counts with ``auto`` (default 1: the plain exchange, for comparison), and one row the exchange received by
an all-to-all and reordered (the default receives every part in place). At N=1 diffusers runs plain (its
CP needs a degree > 1). Times are per-rank CUDA-event
medians after warm-up, the slowest rank's; peak memory is the model's own weights plus the forward's peak
above what was resident, the largest rank's. Every output is compared with the 1-GPU diffusers output of
the first launch (and with its own side's 1-GPU output). With --cfg-parallel-gpus 4, that launch also times a
guided step (cond + uncond, scale 5) with CFG parallelism (2 branches x 2-way Ulysses) against the 1-GPU serial
guided step of the first launch; a guided step must match vidport's 1-GPU one (guidance multiplies the bf16
rounding of both forwards, so its distance to diffusers' guided output is reported, not checked).
Keep NCCL_NVLS_ENABLE=0 (and TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1) on multi-GPU hosts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import compare, diffusers_wan, native_from_diffusers, table  # noqa: E402

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")

DTYPE = torch.bfloat16
GUIDANCE_SCALE = 5.0
# vidport backend pair -> the diffusers backend that runs the same kernel
SAME_KERNEL = {("sdpa-cudnn", "sdpa-cudnn"): "_native_cudnn", ("sdpa", "sdpa"): "native"}


def _time(fn, device: torch.device, warmup: int, repeats: int) -> tuple[torch.Tensor, float]:
    """(last output, median ms of the slowest rank); every iteration starts together on all ranks."""
    import torch.distributed as dist

    times = []
    for i in range(warmup + repeats):
        dist.barrier()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize(device)
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            out = fn()
            ms = 1e3 * (time.perf_counter() - t0)
        if i >= warmup:
            times.append(ms)
    slowest = torch.tensor([statistics.median(times)], device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return out, slowest.item()


def _weights_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def _measure(fn, device, weights_bytes: int, args) -> dict:
    """Time ``fn`` and read its peak memory; rank 0 keeps the output (fp32, on the CPU)."""
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
    with torch.no_grad():
        out, ms = _time(fn, device, args.warmup, args.repeats)
    row = {"ms": ms}
    if device.type == "cuda":
        peak = torch.tensor([weights_bytes + torch.cuda.max_memory_allocated(device) - resident], device=device,
                            dtype=torch.float64)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        row["peak_gib"] = peak.item() / 2**30
    row["out"] = out.float().cpu() if dist.get_rank() == 0 else None
    return row


def _sdpa_dispatch(q: torch.Tensor) -> str:
    """The kernel torch's SDPA dispatch picks for q=k=v (what diffusers' ``native`` backend runs)."""
    from torch.nn.attention import SDPBackend

    try:
        return SDPBackend(torch._fused_sdp_choice(q, q, q)).name.lower()
    except Exception as e:  # a private API: say so rather than fail the benchmark
        return f"unknown ({type(e).__name__})"


@contextlib.contextmanager
def _cpu_accelerator_count(device: torch.device):
    """diffusers' ``_resolve_parallel_config`` takes ``rank % torch.accelerator.device_count()``, which is 0 on
    a CPU-only host; for the CPU smoke run only, report one device so the same code path runs over gloo."""
    if device.type != "cpu":
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


def _rank(worker, args, latent: tuple[int, int, int], cfg_parallel: bool) -> dict:
    import torch.distributed as dist
    from diffusers.models._modeling_parallel import ContextParallelConfig
    from vidport.runtime.models.wan.config import preset
    from vidport.runtime.models.wan.parallel import parallelize_wan
    from vidport.runtime.parallel import DistributedAttention, parallelize
    from vidport.runtime.parallel.generator import resolve_backends_on_ranks
    from vidport.runtime.parallel.ulysses import pipeline_chunks
    from vidport.runtime.pipeline.guidance import SerialCFG, combine
    from vidport.runtime.pipeline.state import Conditioning

    cfg, dev, world = preset(args.preset), worker.device, worker.world_size
    # 1. the same weights on every rank: diffusers' init, then rank 0's copy, then the native model from it
    ref = diffusers_wan(cfg, device=dev, dtype=DTYPE, seed=0)
    for tensor in [*ref.parameters(), *ref.buffers()]:
        dist.broadcast(tensor.data, src=0)
    native = native_from_diffusers(ref, cfg, device=dev, dtype=DTYPE)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, cfg.in_dim, *latent, generator=g).to(dev, DTYPE)
    t = torch.tensor([500.0], device=dev)
    cond, uncond = (torch.randn(1, cfg.text_len, cfg.text_dim, generator=g).to(dev, DTYPE) for _ in range(2))
    report: dict = {"world": world, "rows": []}
    if worker.is_main and dev.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(dev)
    heads_shape = (1, cfg.num_heads, latent[0] * (latent[1] // 2) * (latent[2] // 2), cfg.head_dim)
    sdpa_kernel = _sdpa_dispatch(torch.randn(heads_shape, device=dev, dtype=DTYPE))
    report["sdpa_dispatch"] = sdpa_kernel

    def add(side: str, attention: str, pair: str | None, row: dict, kind: str = "forward") -> None:
        report["rows"].append({"side": side, "attention": attention, "pair": pair, "kind": kind, **row})
        if worker.is_main:
            print(f"[N={world}] {side} ({attention}) {kind}: {row['ms']:.1f} ms"
                  + (f", peak {row['peak_gib']:.2f} GiB" if "peak_gib" in row else ""), flush=True)

    # 2. vidport: Ulysses over all N ranks (at N=1 the plain model, as the runtime runs one GPU)
    auto = resolve_backends_on_ranks("auto", dev, DTYPE, cfg.head_dim)
    report["auto"] = auto
    sp, _ = parallelize(native, parallelize_wan)
    auto_label = None
    variants = [auto] + ([] if args.defaults_only else
                         ([("sdpa-cudnn",) * 2] if dev.type == "cuda" else []) + [("sdpa",) * 2])
    for backends in dict.fromkeys(variants):
        sp.set_attention_backend(*backends)
        name = " + ".join(dict.fromkeys(backends))
        if backends == ("sdpa", "sdpa"):
            name = f"sdpa ({sdpa_kernel})"
        label = f"auto = {name}" if backends == auto else name
        auto_label = label if backends == auto else auto_label
        pair = SAME_KERNEL.get(backends, "native")
        add("vidport Ulysses", label, pair, _measure(lambda: sp(x, t, cond), dev, _weights_bytes(native), args))
    sp.set_attention_backend(*auto)
    # the exchange with other numbers of pipelined head groups (the rows above: the default, pipeline_chunks)
    ops = [m for m in native.modules() if isinstance(m, DistributedAttention)]
    local_heads = cfg.num_heads // world
    for chunks in ([] if world == 1 else [c for c in args.ulysses_chunks if local_heads % c == 0
                                          and c != pipeline_chunks(local_heads, auto[0])]):
        for op in ops:
            op.chunks = chunks
        add(f"vidport Ulysses, exchange in {chunks} head group{'s' if chunks > 1 else ''}", auto_label,
            SAME_KERNEL.get(auto, "native"),
            _measure(lambda: sp(x, t, cond), dev, _weights_bytes(native), args))
    for op in ops:
        op.chunks = None
    if world > 1:  # the parts received by one all-to-all and reordered by a copy (what batch > 1 runs)
        for op in ops:
            op.direct_receive = False
        add("vidport Ulysses, all-to-all + reorder", auto_label, SAME_KERNEL.get(auto, "native"),
            _measure(lambda: sp(x, t, cond), dev, _weights_bytes(native), args))
        for op in ops:
            op.direct_receive = True

    # 3. vidport guided step: serial CFG on one GPU, or CFG-parallel x Ulysses over all ranks
    if world == 1 and not args.defaults_only:
        step = (lambda: SerialCFG()(sp, x, t, Conditioning({"context": cond}), Conditioning({"context": uncond}),
                                    GUIDANCE_SCALE))
        add("vidport serial CFG", f"auto = {' + '.join(dict.fromkeys(auto))}", None,
            _measure(step, dev, _weights_bytes(native), args), kind="guided step")
    elif cfg_parallel:
        del sp, native
        fresh = native_from_diffusers(ref, cfg, device=dev, dtype=DTYPE)  # the first one holds world-wide ops
        fresh.set_attention_backend(*auto)
        dit, strategy = parallelize(fresh, parallelize_wan, cfg_parallel=True)
        step = (lambda: strategy(dit, x, t, Conditioning({"context": cond}), Conditioning({"context": uncond}),
                                 GUIDANCE_SCALE))
        add(f"vidport CFG-parallel (2 x {world // 2}-way Ulysses)", f"auto = {' + '.join(dict.fromkeys(auto))}",
            None, _measure(step, dev, _weights_bytes(fresh), args), kind="guided step")
        del dit, fresh

    # 4. diffusers: its own context parallelism (Ulysses) over all N ranks; at N=1 the plain model
    if world > 1:
        with _cpu_accelerator_count(dev):
            ref.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
    backends = ["native"] + (["_native_cudnn"] if dev.type == "cuda" and not args.defaults_only else [])
    guided_ref = None
    for backend in backends:
        ref.set_attention_backend(backend)
        label = f"native = SDPA dispatch ({sdpa_kernel})" if backend == "native" else backend
        side = "diffusers plain" if world == 1 else f"diffusers CP (ulysses_degree={world})"
        row = _measure(lambda: ref(x, t, cond, return_dict=False)[0], dev, _weights_bytes(ref), args)
        add(side, label, backend, row)
        # the guided reference: diffusers' own two forwards, combined
        if world == 1 and backend == "native" and not args.defaults_only:
            with torch.no_grad():
                guided_ref = combine(row["out"], ref(x, t, uncond, return_dict=False)[0].float().cpu(),
                                     GUIDANCE_SCALE)
    report["guided_ref"] = guided_ref if worker.is_main else None
    return report if worker.is_main else {}


def _rows(results: dict[int, dict]) -> tuple[list[list], list[dict]]:
    """The table: every row with its speedup over its own 1-GPU run, its ratio to diffusers with the same
    kernel at the same N, and its rel L2 against the 1-GPU diffusers output."""
    base = results[1]
    ref_out = next(r["out"] for r in base["rows"] if r["side"] == "diffusers plain" and r["pair"] == "native")
    guided_ref = base["guided_ref"]
    one_gpu = {(r["side"].split()[0], r["attention"], r["kind"]): r for r in base["rows"]}
    serial = next((r for r in base["rows"] if r["kind"] == "guided step"), None)  # none with --defaults-only
    table_rows, records = [], []
    for n, res in results.items():
        diffusers_ms = {r["pair"]: r["ms"] for r in res["rows"] if r["side"].startswith("diffusers")}
        for r in res["rows"]:
            guided = r["kind"] == "guided step"
            own = serial if guided else one_gpu.get((r["side"].split()[0], r["attention"], r["kind"]))
            vs = compare(r["out"], guided_ref if guided else ref_out)
            ratio = (r["ms"] / diffusers_ms[r["pair"]]) if r["side"].startswith("vidport") and r["pair"] else None
            rec = {k: v for k, v in r.items() if k != "out"}
            rec.update(gpus=n, speedup_vs_own_1gpu=own["ms"] / r["ms"] if own else None, vidport_over_diffusers=ratio,
                       rel_l2_vs_1gpu_diffusers=vs["rel_l2"], max_abs_vs_1gpu_diffusers=vs["max_abs"])
            # the parallel run against the same side's own 1-GPU output
            rec["rel_l2_vs_own_1gpu"] = compare(r["out"], own["out"])["rel_l2"] if own else None
            records.append(rec)
            table_rows.append([n, r["side"], r["attention"], r["kind"], f"{r['ms']:.1f}",
                               f"{own['ms'] / r['ms']:.2f}x" if own else "-",
                               f"{ratio:.3f} (vs {r['pair']})" if ratio else "-",
                               f"{r['peak_gib']:.2f}" if "peak_gib" in r else "-", f"{vs['rel_l2']:.2e}",
                               f"{rec['rel_l2_vs_own_1gpu']:.2e}" if own else "-"])
    return table_rows, records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world-sizes", default="1,2,4", help="comma-separated; the first must be 1")
    ap.add_argument("--cfg-parallel-gpus", type=int, default=4,
                    help="the world size that also times CFG-parallel x Ulysses (0: none)")
    ap.add_argument("--preset", default="1.3b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tolerance", type=float, default=3e-2, help="rel L2 vs 1-GPU diffusers (bf16)")
    ap.add_argument("--json", type=Path, help="write all numbers here")
    ap.add_argument("--defaults-only", action="store_true",
                    help="each side's default attention only (vidport auto, diffusers native), no serial guided step "
                         "(for the 14B at 720p, where every forward takes seconds)")
    ap.add_argument("--ulysses-chunks", default="1",
                    help="comma-separated head-group counts of vidport's pipelined exchange to time besides the "
                         "default (1: the unpipelined exchange)")
    args = ap.parse_args()
    args.ulysses_chunks = [int(c) for c in args.ulysses_chunks.split(",") if c]

    import diffusers
    from vidport.runtime.parallel import launch

    sizes = [int(s) for s in args.world_sizes.split(",")]
    if sizes[0] != 1:
        ap.error("--world-sizes must start with 1 (the 1-GPU reference)")
    latent = ((args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    results = {}
    for n in sizes:
        results[n] = launch(_rank, n, args, latent, n == args.cfg_parallel_gpus, device=args.device)
    table_rows, records = _rows(results)
    base = results[1]
    info = {"gpu": base.get("gpu", "cpu"), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "preset": args.preset, "video": [args.frames, args.height, args.width], "latent": list(latent),
            "tokens": latent[0] * (latent[1] // 2) * (latent[2] // 2), "dtype": "bf16",
            "vidport_auto": list(base["auto"]), "sdpa_dispatch": base["sdpa_dispatch"],
            "warmup": args.warmup, "repeats": args.repeats}
    print(f"# {info['gpu']} x{max(sizes)}, torch {info['torch']}, diffusers {info['diffusers']}; Wan {args.preset}, "
          f"{args.frames}x{args.height}x{args.width} -> {info['tokens']} tokens, bf16; vidport auto = "
          f"{' + '.join(base['auto'])}; torch SDPA dispatch (diffusers native) = {base['sdpa_dispatch']}")
    print(table(table_rows, ["GPUs", "side", "attention", "per", "ms", "speedup vs own 1-GPU",
                             "vidport / diffusers (same kernel)", "peak GiB", "rel L2 vs 1-GPU diffusers",
                             "rel L2 vs own 1-GPU"]))
    # a guided step is checked against vidport's own 1-GPU guided step: guidance multiplies the bf16 rounding of
    # both forwards (uncond + s * (cond - uncond)), so its distance to diffusers' guided output is informational
    failed = [r for r in records
              if not r["rel_l2_vs_own_1gpu" if r["kind"] == "guided step" else "rel_l2_vs_1gpu_diffusers"]
              <= args.tolerance]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**info, "rows": records}, indent=2))
    if failed:
        for r in failed:
            print(f"FAIL: {r['gpus']} GPUs {r['side']} ({r['attention']}) {r['kind']}: rel L2 over {args.tolerance}"
                  f" (vs 1-GPU diffusers {r['rel_l2_vs_1gpu_diffusers']:.2e}, vs own 1-GPU "
                  f"{r['rel_l2_vs_own_1gpu'] or float('nan'):.2e})", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
