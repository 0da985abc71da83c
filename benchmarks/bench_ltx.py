"""LTX-Video 2B: vidport's native DiT and whole generation vs diffusers (LTXVideoTransformer3DModel, LTXPipeline),
same process, same GPU, same random weights at the real sizes.

    python benchmarks/bench_ltx.py dit [--compile]       # DiT forward at the official default 121x480x704
    python benchmarks/bench_ltx.py generate              # whole generation: T5-XXL, DiT, v0.9.1 VAE, 40 steps
    python benchmarks/bench_ltx.py parts                 # a block's GEMMs and attentions one by one (CUDA graphs)

``dit``: diffusers' transformer (its random init, bf16) and the native DiT loaded from it through the committed
Diffusers -> native map; the two bf16 outputs are compared with each other and with diffusers in fp32 before any
timing; then eager medians (CUDA events), and with ``--compile`` both compiled (diffusers' compile_repeated_blocks,
vidport's per-block torch.compile). The attention ceiling at LTX's shape (32 heads of 64, 5280 tokens) is measured
per backend in the same run, with the backend ``auto`` picks.

``generate``: a T5 v1.1 XXL encoder, the v0.9.1 VAE (fp32, as both pipelines decode it here) and the 2B DiT at their
real sizes with random weights; vidport's VideoGenerator (native DiT, auto attention) and diffusers' LTXPipeline share
the T5, the VAE, the tokenizer and the scheduler config; each runs the official defaults (480x704, 121 frames, 40
steps, guidance 3, decode timestep 0.05 / noise 0.025) once to warm up, then timed. Reports totals, vidport's stage
breakdown, peak GPU memory of each, and how far the two videos are apart.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidport.runtime import attention  # noqa: E402
from vidport.runtime.models.ltx_video import family  # noqa: E402
from vidport.runtime.models.ltx_video.config import preset  # noqa: E402

from benchmarks.common import attention_tflops, compare, matmul_ceiling_tflops, median_ms  # noqa: E402

CFG = preset("2b")
FRAMES, HEIGHT, WIDTH = 121, 480, 704
DEV = "cuda"
PRESET = "2b"


def geometry():
    grid = ((FRAMES - 1) // 8 + 1, HEIGHT // 32, WIDTH // 32)  # 16 x 15 x 22 latent tokens by default
    return grid, grid[0] * grid[1] * grid[2]


GRID, TOKENS = geometry()
SCALE = (8 / 25, 32, 32)  # LTXPipeline's rope_interpolation_scale at 25 fps


DTYPE = torch.bfloat16


def cuda_reset_peak() -> None:
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()


def cuda_peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else float("nan")


def cuda_sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def diffusers_dit(dtype=None):
    dtype = dtype or DTYPE
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(0)
    with torch.device(DEV):
        model = LTXVideoTransformer3DModel(**{k: v for k, v in CFG.to_diffusers().items() if not k.startswith("_")})
    if DEV != "cuda":  # smoke mode: random weights everywhere (diffusers' init leaves tables trivial)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype).eval().requires_grad_(False)


def native_from(ref, dtype=None):
    dtype = dtype or DTYPE
    from vidport.porting.namemap import NameMap
    from vidport.porting.sources import ModuleSource
    from vidport.runtime.loading import load_into
    from vidport.runtime.models.ltx_video.model import LTXDiT

    with torch.device("meta"):
        model = LTXDiT(CFG)
    load_into(model, ModuleSource(ref, "diffusers"), NameMap.load(family.DIFFUSERS_TO_NATIVE), device=DEV,
              dtype_fn=lambda name, t: dtype)
    return model.eval().requires_grad_(False)


def dit_inputs(dtype=None):
    dtype = dtype or DTYPE
    g = torch.Generator(DEV).manual_seed(0)
    x = torch.randn(1, TOKENS, CFG.in_channels, device=DEV, generator=g).to(dtype)
    text = torch.randn(1, family.TEXT_LEN, CFG.caption_channels, device=DEV, generator=g).to(dtype)
    mask = (torch.arange(family.TEXT_LEN, device=DEV) < 40).long()[None]  # a 40-token prompt, padded to 128
    t = torch.tensor([500.0], device=DEV)
    return x, text, t, mask


def print_profile(title: str, fn, rows: int = 25) -> None:
    """One forward under torch.profiler: the kernels by total time, their count and sum (the GPU time)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        cuda_sync()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    total = sum(e.self_device_time_total for e in events) / 1e3
    count = sum(e.count for e in events)
    print(f"profile of {title}: {count} kernels, {total:.2f} ms of GPU time")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:rows]:
        print(f"  {e.self_device_time_total / 1e3:8.3f} ms {e.count:5d}x  {e.key[:110]}")


def bench_dit(args, out: dict) -> None:
    out["matmul_tflops"] = matmul_ceiling_tflops() if DEV == "cuda" else float("nan")
    attn = {}
    for name in ("sdpa-cudnn", "flash-attn-4", "sdpa-flash", "sdpa-efficient") if DEV == "cuda" else ():
        if name in attention.available_backends("cuda"):
            ms, tf = attention_tflops(attention.get_backend(name), 1, TOKENS, CFG.num_attention_heads,
                                      CFG.attention_head_dim)
            attn[name] = {"ms": ms, "tflops": tf}
    out["attention_ceiling"] = attn
    auto = attention.resolve_backends("auto", DEV, DTYPE, head_dim=CFG.attention_head_dim)
    out["auto_backends"] = auto
    print(f"ceilings at {TOKENS} tokens, 32 heads x 64: matmul {out['matmul_tflops']:.0f} TFLOP/s; attention "
          + ", ".join(f"{k} {v['tflops']:.0f} ({v['ms']:.2f} ms)" for k, v in attn.items())
          + f"; auto picks {auto[0]} (self) + {auto[1]} (cross)", flush=True)

    ref = diffusers_dit()
    native = native_from(ref)
    native.set_attention_backend(*auto)
    x, text, t, mask = dit_inputs()
    kw = dict(num_frames=GRID[0], height=GRID[1], width=GRID[2], rope_interpolation_scale=SCALE)

    def run_ref():
        return ref(x, text, t, mask, **kw, return_dict=False)[0]

    def run_native():
        return native(x, text, t, mask, **kw)

    with torch.no_grad():
        y_ref, y_nat = run_ref().float(), run_native().float()
        out["parity_native_vs_diffusers_bf16"] = compare(y_nat, y_ref)
        ref32 = diffusers_dit(torch.float32)
        ref32.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
        y32 = ref32(x.float(), text.float(), t, mask, **kw, return_dict=False)[0].float()
        del ref32
        out["parity_native_bf16_vs_fp32"] = compare(y_nat, y32)
        out["parity_diffusers_bf16_vs_fp32"] = compare(y_ref, y32)
    cuda_sync()
    for k, v in out.items():
        if k.startswith("parity"):
            print(f"{k}: max_abs {v['max_abs']:.3e} rel_l2 {v['rel_l2']:.3e} cosine {v['cosine']:.6f}", flush=True)

    times, rounds = {}, {}  # the faster median of each row; every median of each row, in order

    def measure(label, fn):
        """Time ``fn``; a row measured again keeps its faster median."""
        cuda_reset_peak()
        with torch.no_grad():
            ms = median_ms(fn, warmup=2, repeats=args.repeats, device=DEV)
        print(f"{label}: {ms:.2f} ms, peak {cuda_peak_gib():.1f} GiB", flush=True)
        rounds.setdefault(label, []).append(ms)
        if label not in times or ms < times[label]["ms"]:
            times[label] = {"ms": ms, "peak_gib": cuda_peak_gib()}

    for _round in (1, 2):  # two rounds: clocks settle; the faster median of each row is kept
        for label, fn in (("diffusers eager", run_ref), (f"vidport eager ({auto[0]} + {auto[1]})", run_native)):
            measure(label, fn)
    for name in ("sdpa-cudnn", "flash-attn-4", "sdpa-flash"):
        if (name, name) != tuple(auto) and name in attention.available_backends(DEV):
            native.set_attention_backend(name, auto[1])  # the cross-attention keeps a backend that takes the mask
            with torch.no_grad():
                p = compare(run_native().float(), y_ref)
            print(f"{name}: rel_l2 vs diffusers bf16 {p['rel_l2']:.3e}", flush=True)
            measure(f"vidport eager ({name} + {auto[1]})", run_native)
    native.set_attention_backend(*auto)
    for blk in native.blocks:  # the other q/k/v memory order (the default is sequence-first)
        blk.attn.heads_first = True
    with torch.no_grad():
        p = compare(run_native().float(), y_ref)
    print(f"heads-first q/k/v: rel_l2 vs diffusers bf16 {p['rel_l2']:.3e}", flush=True)
    measure(f"vidport eager, heads-first q/k/v ({auto[0]} + {auto[1]})", run_native)
    if args.cuda_graph:
        from vidport.runtime.cuda_graph import CUDAGraphed

        graphed = CUDAGraphed(native)
        with torch.no_grad():
            graphed(x, text, t, mask, **kw)
        measure("vidport eager + CUDA graph, heads-first q/k/v", lambda: graphed(x, text, t, mask, **kw))
        del graphed
        cuda_sync()
    for blk in native.blocks:
        blk.attn.heads_first = False
    if args.profile:
        for title, fn in (("vidport eager", run_native), ("diffusers eager", run_ref)):
            print_profile(title, fn)
    if args.cuda_graph:
        from vidport.runtime.cuda_graph import CUDAGraphed

        graphed = CUDAGraphed(native)
        with torch.no_grad():
            p = compare(graphed(x, text, t, mask, **kw).float(), run_native().float())
        print(f"vidport eager + CUDA graph vs without: max_abs {p['max_abs']:.3e}", flush=True)
        measure(f"vidport eager + CUDA graph ({auto[0]} + {auto[1]})", lambda: graphed(x, text, t, mask, **kw))
        del graphed
        cuda_sync()
    if args.compile:
        from vidport.runtime.kernels import fused

        # every block variant the bench compiles (kernels as ops or traced; first, middle and last of the chain)
        dyn = torch._dynamo.config
        limit = "recompile_limit" if hasattr(dyn, "recompile_limit") else "cache_size_limit"
        setattr(dyn, limit, max(getattr(dyn, limit), 32))
        ref.compile_repeated_blocks(fullgraph=True)
        measure("diffusers compiled", run_ref)
        if args.profile:
            print_profile("diffusers compiled", run_ref)
        eager_blocks = list(native.blocks)
        second_round = []  # the runtime's configuration, timed again after the others (alternating with diffusers)
        for ops in (False, True):  # inductor fusing the reference math, or the fused kernels as custom ops
            fused.KERNELS_UNDER_COMPILE = ops
            torch._dynamo.reset()
            for i, blk in enumerate(eager_blocks):
                native.blocks[i] = torch.compile(blk, fullgraph=True, dynamic=False)
            with torch.no_grad():
                p = compare(run_native().float(), y_ref)
            label = f"vidport compiled ({'kernels as custom ops' if ops else 'inductor fuses the reference math'})"
            print(f"{label}: rel_l2 vs diffusers bf16 eager {p['rel_l2']:.3e}", flush=True)
            measure(label, run_native)
            if args.profile and ops:
                print_profile(f"{label} (no graph)", run_native)
            if args.cuda_graph:  # the runtime's compile=True, cuda_graph=True: compiled blocks in one graph
                from vidport.runtime.cuda_graph import CUDAGraphed

                graphed = CUDAGraphed(native)
                with torch.no_grad():
                    p = compare(graphed(x, text, t, mask, **kw).float(), y_ref)
                print(f"{label} + CUDA graph: rel_l2 vs diffusers bf16 eager {p['rel_l2']:.3e}", flush=True)
                measure(f"{label} + CUDA graph", lambda g=graphed: g(x, text, t, mask, **kw))
                if args.profile and ops:  # the replay's own kernels (CUPTI sees a graph's kernel nodes)
                    print_profile(f"{label} + CUDA graph (replay)", lambda g=graphed: g(x, text, t, mask, **kw))
                if ops:
                    second_round.append((f"{label} + CUDA graph", lambda g=graphed: g(x, text, t, mask, **kw)))
                    # what the runtime's pipeline feeds one branch (serial CFG): the text cut after its last real
                    # token, no mask left (drop_common_padding); not the like-for-like row, diffusers gets the padded
                    # text and its mask
                    cut = int(mask.sum())
                    trimmed = (f"{label} + CUDA graph, text cut to its {cut} real tokens, no mask "
                               f"(the runtime's pipeline, one branch)")
                    with torch.no_grad():
                        p = compare(graphed(x, text[:, :cut], t, None, **kw).float(), y_ref)
                    print(f"{trimmed}: rel_l2 vs diffusers bf16 eager (padded text) {p['rel_l2']:.3e}", flush=True)
                    measure(trimmed, lambda g=graphed, n=cut: g(x, text[:, :n], t, None, **kw))
                else:
                    del graphed
                cuda_sync()
        for label, fn in [("diffusers compiled", run_ref)] + second_round:
            measure(label, fn)
        second_round.clear()
        fused.KERNELS_UNDER_COMPILE = True
    out["times"] = times
    eager = times["diffusers eager"]["ms"]
    best = min(v["ms"] for k, v in times.items() if k.startswith("vidport eager") and "CUDA graph" not in k)
    out["ratio_eager"] = best / eager
    print(f"ratio vidport/diffusers eager: {best / eager:.3f}", flush=True)
    if args.cuda_graph:
        graph_ms = min(v["ms"] for k, v in times.items() if k.startswith("vidport eager + CUDA graph"))
        out["ratio_eager_cuda_graph"] = graph_ms / eager
        print(f"ratio vidport + CUDA graph / diffusers eager: {graph_ms / eager:.3f}", flush=True)
    if args.compile:
        best_c = min(v["ms"] for k, v in times.items() if k.startswith("vidport compiled") and "text cut" not in k)
        out["ratio_compiled"] = best_c / times["diffusers compiled"]["ms"]
        print(f"ratio vidport/diffusers compiled: {out['ratio_compiled']:.3f}", flush=True)
        runtime = "vidport compiled (kernels as custom ops)" + (" + CUDA graph" if args.cuda_graph else "")
        paired = [a / b for a, b in zip(rounds.get(runtime, []), rounds["diffusers compiled"])]
        out["ratio_compiled_by_round"] = paired
        print("ratio vidport/diffusers compiled, round by round (the runtime's compile=True"
              + (", cuda_graph=True" if args.cuda_graph else "") + "): "
              + ", ".join(f"{r:.3f}" for r in paired), flush=True)


def graph_ms(fn, repeats: int = 20) -> float:
    """Median ms of one replay of ``fn`` captured as a CUDA graph (how the runtime's compiled forward runs it:
    no host launch cost, the kernel nodes' own gaps included)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return median_ms(graph.replay, warmup=3, repeats=repeats)


def bench_parts(args, out: dict) -> None:
    """Where a block's time goes, part by part, at the real shapes (bf16, batch 1, 5280 tokens): each GEMM as the
    model runs it (``F.linear`` with the bias in cuBLASLt's epilogue) and without the bias (plain GEMM, the bias left
    to a following elementwise kernel), under both BLAS libraries; the 28 blocks' text k/v projections one by one
    and as one GEMM; the self- and cross-attention (128 keys masked vs only the 40 real keys). Each part is looped
    28 times (one per block) inside a CUDA graph."""
    from vidport.runtime.attention import get_backend

    d, n, L = CFG.dim, CFG.num_layers, family.TEXT_LEN
    ffn = 4 * d
    g = torch.Generator(DEV).manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, device=DEV, generator=g, dtype=torch.float32).to(DTYPE)

    x, h = rnd(TOKENS, d), rnd(TOKENS, ffn)
    rows = {}

    def row(label, fn, flops):
        ms = graph_ms(lambda: [fn() for _ in range(n)]) / n
        rows[label] = {"us": ms * 1e3, "tflops": flops / ms / 1e9}
        print(f"  {label:<58} {ms * 1e3:8.1f} us  {flops / ms / 1e9:6.0f} TFLOP/s", flush=True)

    shapes = {"self-attn qkv (N=3d)": (x, 3 * d), "attn out / cross q / cross out (N=d)": (x, d),
              "ffn fc2 (K=4d)": (h, d)}
    print(f"GEMMs of a block, M={TOKENS} (x28 in one graph):", flush=True)
    for lib in ("cublaslt", "cublas"):
        torch.backends.cuda.preferred_blas_library(lib)
        for name, (a, nout) in shapes.items():
            w, b = rnd(nout, a.shape[1]), rnd(nout)
            flops = 2 * a.shape[0] * a.shape[1] * nout
            row(f"[{lib}] {name} + bias", lambda a=a, w=w, b=b: torch.nn.functional.linear(a, w, b), flops)
            row(f"[{lib}] {name}, no bias", lambda a=a, w=w: torch.nn.functional.linear(a, w), flops)
        w1, b1 = rnd(ffn, d), rnd(ffn)
        row(f"[{lib}] ffn fc1 + bias + GELU epilogue",
            lambda w1=w1, b1=b1: torch._addmm_activation(b1, x, w1.t(), use_gelu=True), 2 * TOKENS * d * ffn)
    torch.backends.cuda.preferred_blas_library("cublaslt")
    if args.autotune:  # inductor's GEMM autotuning (Triton templates against cuBLAS) on the N=d shape
        w, b = rnd(d, d), rnd(d)
        tuned = torch.compile(lambda a, w, b: torch.nn.functional.linear(a, w, b), mode="max-autotune-no-cudagraphs")
        row("[inductor max-autotune] attn out / cross q / cross out (N=d) + bias", lambda: tuned(x, w, b),
            2 * TOKENS * d * d)
    text = rnd(L, d)
    wkv, bkv = rnd(n, 2 * d, d), rnd(n, 2 * d)
    wall, ball = wkv.flatten(0, 1), bkv.flatten()
    flops = 2 * L * d * 2 * d
    it = iter(range(10**9))
    row("text k/v, one block at a time", lambda: torch.nn.functional.linear(text, wkv[next(it) % n], bkv[0]), flops)
    ms = graph_ms(lambda: torch.nn.functional.linear(text, wall, ball))
    rows["text k/v, all 28 blocks in one GEMM"] = {"us": ms * 1e3 / n, "tflops": n * flops / ms / 1e9}
    print(f"  {'text k/v, all 28 blocks in one GEMM (per block)':<58} {ms * 1e3 / n:8.1f} us", flush=True)

    heads, hd = CFG.num_attention_heads, CFG.attention_head_dim
    q, k, v = (rnd(1, TOKENS, heads, hd) for _ in range(3))
    tk, tv = rnd(1, L, heads, hd), rnd(1, L, heads, hd)
    mask = (torch.arange(L, device=DEV) < 40)[None]
    print("attention of a block:", flush=True)
    for name in ("sdpa-cudnn", "sdpa-flash", "flash-attn-4"):
        if name not in attention.available_backends(DEV):
            continue
        fn = get_backend(name)
        row(f"[{name}] self-attention", lambda fn=fn: fn(q, k, v), 4 * TOKENS * TOKENS * d)
        if name == "sdpa-cudnn":  # the one of these that takes a key mask (what auto picks for LTX's cross-attention)
            row(f"[{name}] cross, 128 keys, 40 real (mask)", lambda fn=fn: fn(q, tk, tv, mask), 4 * TOKENS * L * d)
            row(f"[{name}] cross, 128 keys, no mask", lambda fn=fn: fn(q, tk, tv), 4 * TOKENS * L * d)
            # the same mask in other forms, straight to SDPA's cuDNN kernel (what the mask's cost depends on)
            from torch.nn.attention import SDPBackend, sdpa_kernel

            qh, kh, vh = (t.transpose(1, 2) for t in (q, tk, tv))
            forms = {"bool [B,1,1,L]": mask[:, None, None, :],
                     "additive [B,1,1,L]": torch.where(mask, 0.0, float("-inf")).to(DTYPE)[:, None, None, :],
                     "additive [B,H,S,L] materialized": torch.where(mask, 0.0, float("-inf")).to(DTYPE)[
                         :, None, None, :].expand(1, heads, TOKENS, L).contiguous()}
            for form, m in forms.items():
                def masked(m=m, qh=qh, kh=kh, vh=vh):
                    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                        return torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=m)
                row(f"[{name}] cross, 128 keys, mask {form}", masked, 4 * TOKENS * L * d)
        row(f"[{name}] cross, the 40 real keys only (no mask)",
            lambda fn=fn: fn(q, tk[:, :40], tv[:, :40]), 4 * TOKENS * 40 * d)
    out["parts"] = rows


# ----------------------------------------------------------------------------------------------
# whole generation
# ----------------------------------------------------------------------------------------------
def random_t5(dtype=None):
    dtype = dtype or DTYPE
    from transformers import T5Config, T5EncoderModel

    with torch.device("meta"):
        model = T5EncoderModel(T5Config(**family.text_encoder_config(PRESET)))
    model = model.to_empty(device=DEV)
    g = torch.Generator(DEV).manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, p.shape[-1] ** -0.5, generator=g)
    return model.to(dtype).eval().requires_grad_(False)


def bench_generate(args, out: dict) -> None:
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline
    from transformers import T5TokenizerFast
    from vidport.runtime.generator import VideoGenerator
    from vidport.runtime.models.ltx_video import pipeline as ltx
    from vidport.runtime.models.tiny_weights import make_tokenizer

    tok_dir = Path(tempfile.mkdtemp()) / "tokenizer"
    make_tokenizer(tok_dir, 32128, model_max_length=family.TEXT_LEN)
    tokenizer = T5TokenizerFast.from_pretrained(tok_dir)
    t5 = random_t5()
    torch.manual_seed(2)
    with torch.device(DEV):
        vae = AutoencoderKLLTXVideo(**family.vae_config(PRESET)).float().eval().requires_grad_(False)
    if args.vae_tiling:
        vae.enable_tiling()
    ref = diffusers_dit()
    native = native_from(ref)
    auto = attention.resolve_backends("auto", DEV, DTYPE, head_dim=CFG.attention_head_dim)
    native.set_attention_backend(*auto)
    sched_cfg = family.scheduler_config()
    comps = ltx.LTXComponents(tokenizer=tokenizer, text_encoder=t5, transformer=native, vae=vae,
                              scheduler=FlowMatchEulerDiscreteScheduler(**sched_cfg), dit_config=CFG,
                              dtype=DTYPE, device=torch.device(DEV))
    gen = VideoGenerator(comps, ltx, family=family.SPEC, cfg=args.cfg, source="random 2B")
    pipe = LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**sched_cfg), vae=vae, text_encoder=t5,
                       tokenizer=tokenizer, transformer=ref)
    pipe.set_progress_bar_config(disable=True)
    prompt = "a cat walks on the grass in the sun, the camera follows it slowly"
    request = dict(num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_inference_steps=args.steps,
                   guidance_scale=3.0, seed=0)
    neg = ltx.NEGATIVE_PROMPT

    def run_ours():
        return gen.generate_video(prompt, negative_prompt=neg, **request)

    def run_theirs():
        torch.manual_seed(0)
        r = pipe(prompt, negative_prompt=neg, num_frames=FRAMES, height=HEIGHT, width=WIDTH,
                 num_inference_steps=args.steps, guidance_scale=3.0, decode_timestep=family.DECODE_TIMESTEP,
                 decode_noise_scale=family.DECODE_NOISE_SCALE, generator=torch.Generator("cpu").manual_seed(0),
                 output_type="np", max_sequence_length=family.TEXT_LEN)
        return (r.frames[0] * 255).round().clip(0, 255).astype("uint8")

    results = {}
    for label, fn in (("diffusers LTXPipeline", run_theirs), (f"vidport ({auto[0]} + {auto[1]}, {args.cfg} CFG)",
                                                                run_ours)):
        with torch.no_grad():
            fn()  # warm-up
            cuda_sync()
            cuda_reset_peak()
            t0 = time.perf_counter()
            frames = fn()
            cuda_sync()
            secs = time.perf_counter() - t0
        peak = cuda_peak_gib()
        results[label] = {"seconds": secs, "peak_gib": peak, "frames": frames}
        print(f"{label}: {secs:.2f} s, peak {peak:.1f} GiB", flush=True)
        if label.startswith("vidport"):
            stages = {k: round(v, 3) for k, v in gen.last_report.timings.items()}
            results[label]["stages"] = stages
            print(f"  stages: {stages}", flush=True)
            peaks = gen.last_report.extra.get("peak_gib_after", {})
            results[label]["peak_gib_after"] = peaks
            print(f"  GPU memory high-water mark after each stage (GiB): {peaks}", flush=True)
    (a_label, a), (b_label, b) = results.items()
    diff = abs(a["frames"].astype(int) - b["frames"].astype(int))
    out["generate"] = {k: {kk: vv for kk, vv in v.items() if kk != "frames"} for k, v in results.items()}
    out["generate"]["frames_mean_abs_diff"] = float(diff.mean())
    out["generate"]["frames_within_8_of_255"] = float((diff <= 8).mean())
    out["ratio_generate"] = b["seconds"] / a["seconds"]
    out["ratio_peak_memory"] = b["peak_gib"] / a["peak_gib"]
    print(f"ratio vidport/diffusers total: {out['ratio_generate']:.3f}; peak memory ratio "
          f"{out['ratio_peak_memory']:.3f}; frames mean |diff| {diff.mean():.2f} levels, "
          f"{100 * (diff <= 8).mean():.1f}% within 8 (bf16 runs of the same weights)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("dit", "generate", "parts"))
    ap.add_argument("--compile", action="store_true", help="dit: also time both models compiled")
    ap.add_argument("--profile", action="store_true", help="dit: print both eager forwards' top CUDA kernels")
    ap.add_argument("--cuda-graph", action="store_true", help="dit: also time the native forward as one CUDA graph")
    ap.add_argument("--cfg", default="batched", choices=("serial", "batched"),
                    help="generate: vidport's CFG strategy (LTXPipeline batches the two branches)")
    ap.add_argument("--autotune", action="store_true", help="parts: also inductor's max-autotune GEMM")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--steps", type=int, default=family.SAMPLING["2b"]["num_inference_steps"])
    ap.add_argument("--json", type=Path, help="write all numbers here")
    ap.add_argument("--vae-tiling", action="store_true", help="generate: decode in tiles (the shared VAE, both sides)")
    ap.add_argument("--smoke", action="store_true", help="the tiny preset on the CPU at 9x64x96 in fp32 (checks "
                    "this script, times nothing meaningful)")
    args = ap.parse_args()
    if args.smoke:
        global CFG, FRAMES, HEIGHT, WIDTH, DEV, PRESET, DTYPE, GRID, TOKENS
        CFG, FRAMES, HEIGHT, WIDTH, DEV, PRESET, DTYPE = preset("tiny"), 9, 64, 96, "cpu", "tiny", torch.float32
        GRID, TOKENS = geometry()
        args.repeats, args.steps = 2, 3

    import diffusers

    out = {"gpu": torch.cuda.get_device_name() if DEV == "cuda" else "cpu", "torch": torch.__version__,
           "diffusers": diffusers.__version__,
           "grid": GRID, "tokens": TOKENS}
    print(f"# {out['gpu']}, torch {out['torch']}, diffusers {out['diffusers']}; LTX-Video 2B, "
          f"{FRAMES}x{HEIGHT}x{WIDTH} -> {TOKENS} tokens", flush=True)
    {"dit": bench_dit, "generate": bench_generate, "parts": bench_parts}[args.what](args, out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
