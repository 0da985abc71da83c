"""Shared helpers for the GPU benchmarks: timing with CUDA events, ceilings, diffusers reference models."""

from __future__ import annotations

import statistics
import time

import torch


def median_ms(fn, *, warmup: int = 2, repeats: int = 7, device: torch.device | str = "cuda") -> float:
    """Median milliseconds of fn() after warm-up: CUDA events on a GPU, the host clock on a CPU."""
    for _ in range(warmup):
        fn()
    if torch.device(device).type != "cuda":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def matmul_ceiling_tflops(n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = median_ms(lambda: a @ b, warmup=3, repeats=10)
    return 2 * n**3 / ms / 1e9


def attention_tflops(fn, b: int, s: int, h: int, d: int) -> tuple[float, float]:
    """(ms, TFLOP/s) of fn on random [B, S, H, D] bf16 q/k/v; FLOPs = 4*B*H*S^2*D."""
    q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ms = median_ms(lambda: fn(q, k, v), warmup=2, repeats=5)
    return ms, 4 * b * h * s * s * d / ms / 1e9


def dit_flops(cfg, tokens: int, text_len: int) -> tuple[float, float]:
    """(attention FLOPs, GEMM FLOPs) of one DiT forward with batch 1."""
    d, f, n = cfg.dim, cfg.ffn_dim, cfg.num_layers
    self_attn = 4 * tokens * tokens * d
    cross_attn = 4 * tokens * text_len * d
    gemm = 2 * tokens * d * (3 * d + d + d + d) + 2 * text_len * d * 2 * d + 2 * 2 * tokens * d * f
    return n * (self_attn + cross_attn), n * gemm


def diffusers_wan(cfg, device="cuda", dtype=torch.bfloat16, seed: int = 0):
    """diffusers WanTransformer3DModel with random weights, dtypes as from_pretrained(torch_dtype=dtype)
    leaves them (its _keep_in_fp32_modules stay fp32)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    with torch.device(device):
        model = WanTransformer3DModel(**{k: v for k, v in cfg.to_diffusers().items() if not k.startswith("_")})
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    for name, p in model.named_parameters():
        fp32 = any(part in keep for part in name.split("."))
        p.data = p.data.to(torch.float32 if fp32 else dtype)
    return model.eval().requires_grad_(False)


def native_from_diffusers(ref, cfg, device="cuda", dtype=torch.bfloat16, keep_fp32: tuple[str, ...] = ()):
    """The native WanDiT with the diffusers model's weights, loaded through the committed map (``keep_fp32``:
    native modules also kept in fp32, as ``load_transformer(keep_fp32=...)``)."""
    from vidport.porting.namemap import NameMap
    from vidport.porting.sources import ModuleSource
    from vidport.runtime.loading import fp32_targets, keeps_native_fp32, load_into
    from vidport.runtime.models.wan import family
    from vidport.runtime.models.wan.model import WanDiT

    with torch.device("meta"):
        model = WanDiT(cfg)
    source, name_map = ModuleSource(ref, "diffusers"), NameMap.load(family.DIFFUSERS_TO_NATIVE)
    fp32 = fp32_targets(name_map, source.keys(), tuple(type(ref)._keep_in_fp32_modules or ()))

    def pick(name, tensor):
        return torch.float32 if name in fp32 or keeps_native_fp32(name, keep_fp32) else dtype

    load_into(model, source, name_map, device=device, dtype_fn=pick)
    return model.eval().requires_grad_(False)


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.double(), b.double()
    diff = (a - b)
    return {
        "max_abs": diff.abs().max().item(),
        "rel_l2": (diff.norm() / b.norm()).item(),
        "cosine": torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item(),
    }


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def worker_pids() -> set[int]:
    """Live spawned workers of this process (the multiprocessing resource tracker is not one): what a run of
    ``runtime.parallel.launch`` must not leave behind. Needs psutil (a dev dependency)."""
    import psutil

    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                found.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found
