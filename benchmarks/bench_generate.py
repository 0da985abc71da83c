"""Full Wan2.1 T2V generation: vidport's VideoGenerator vs diffusers' WanPipeline, same components.

    python benchmarks/bench_generate.py                  # 1.3B, 81x480x832, 50 steps, CFG 5.0, bf16
    python benchmarks/bench_generate.py --preset tiny --device cpu --steps 2   # smoke test

Both pipelines share one full-size umT5-xxl text encoder, one Wan VAE, the tokenizer and scheduler
config (random weights: no download); the DiT is diffusers' WanTransformer3DModel for diffusers and the
native WanDiT with the same weights for vidport. Each pipeline runs a 2-step warm-up, then one timed
generation with the same prompt and seed; the frames of both are compared at the end.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidport.runtime.models.wan import family  # noqa: E402
from vidport.runtime.models.wan.config import preset  # noqa: E402

from benchmarks.common import diffusers_wan, native_from_diffusers, table  # noqa: E402

PROMPT = "a cat walks on the grass, realistic, sunny afternoon"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(args, device, dtype):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel
    from vidport.runtime.generator import VideoGenerator
    from vidport.runtime.models.wan import pipeline as wan_pipeline

    cfg = preset(args.preset)
    torch.manual_seed(0)
    with torch.device(device):
        text_encoder = UMT5EncoderModel(UMT5Config(**family.text_encoder_config(args.preset))).to(dtype).eval()
        vae = AutoencoderKLWan(**family.vae_config(args.preset)).eval()  # fp32, as both pipelines decode
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "official_weights/wan2.1-t2v-tiny/google/umt5-xxl")
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=family.NUM_TRAIN_TIMESTEPS,
                                        flow_shift=family.SAMPLING[args.preset]["flow_shift"])
    ref_dit = diffusers_wan(cfg, device=device, dtype=dtype)
    native = native_from_diffusers(ref_dit, cfg, device=device, dtype=dtype)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=ref_dit, vae=vae,
                       scheduler=copy.deepcopy(scheduler))
    from vidport.runtime.attention import resolve_backends

    native.set_attention_backend(*resolve_backends("auto", device, dtype, head_dim=cfg.head_dim))
    if args.cuda_graph:
        from vidport.runtime.cuda_graph import CUDAGraphed

        native = CUDAGraphed(native)
    components = wan_pipeline.WanComponents(tokenizer=tokenizer, text_encoder=text_encoder, transformer=native,
                                            vae=vae, scheduler=copy.deepcopy(scheduler), dit_config=cfg,
                                            dtype=dtype, device=device)
    return pipe, VideoGenerator(components, wan_pipeline, family=family.SPEC, cfg="serial")


def run_diffusers(pipe, args, device, steps):
    marks = []

    def on_step(p, i, t, kw):
        sync(device)
        marks.append(time.perf_counter())
        return kw

    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        video = pipe(PROMPT, negative_prompt=family.NEGATIVE_PROMPT, height=args.height, width=args.width,
                     num_frames=args.frames, num_inference_steps=steps, guidance_scale=args.guidance,
                     generator=torch.Generator("cpu").manual_seed(0), output_type="np",
                     callback_on_step_end=on_step).frames[0]
    sync(device)
    end = time.perf_counter()
    step = float(np.median(np.diff(marks))) if len(marks) > 1 else marks[0] - start
    timings = {"encode+prepare": marks[0] - start - step, "denoise": marks[-1] - marks[0] + step,
               "decode": end - marks[-1], "total": end - start}
    return (np.clip(video, 0, 1) * 255).round().astype(np.uint8), timings


def run_vidport(gen, args, device, steps):
    sync(device)
    start = time.perf_counter()
    frames = gen.generate_video(PROMPT, negative_prompt=family.NEGATIVE_PROMPT, num_frames=args.frames,
                                height=args.height, width=args.width, num_inference_steps=steps,
                                guidance_scale=args.guidance, seed=0)
    sync(device)
    end = time.perf_counter()
    t = gen.last_report.timings
    timings = {"encode+prepare": t.get("encode", 0) + t.get("timesteps", 0) + t.get("latents", 0),
               "denoise": t["denoise"], "decode": t["decode"], "total": end - start}
    return frames, timings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="1.3b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--frames", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--cuda-graph", action="store_true", help="vidport replays each DiT forward as a CUDA graph")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    defaults = family.SAMPLING[args.preset]
    for k in ("frames", "height", "width"):
        if getattr(args, k) is None:
            setattr(args, k, defaults["num_frames" if k == "frames" else k])
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    import diffusers

    pipe, gen = build(args, device, dtype)
    print(f"# {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"diffusers {diffusers.__version__}; Wan {args.preset} {args.frames}x{args.height}x{args.width}, "
          f"{args.steps} steps, guidance {args.guidance}, {dtype}", flush=True)
    run_diffusers(pipe, args, device, 2)  # warm-up: kernels, cuDNN plans, Triton JIT
    run_vidport(gen, args, device, 2)
    results = {}
    for name, fn, obj in (("diffusers WanPipeline", run_diffusers, pipe), ("vidport VideoGenerator", run_vidport, gen)):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        frames, timings = fn(obj, args, device, args.steps)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        results[name] = {"timings_s": timings, "peak_gib": peak, "frames": frames}
        print(f"{name}: " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()) + f", peak {peak:.1f} GiB",
              flush=True)
    ref, ours = results["diffusers WanPipeline"], results["vidport VideoGenerator"]
    diff = np.abs(ref["frames"].astype(np.int16) - ours["frames"].astype(np.int16))
    rows = []
    for key in ("encode+prepare", "denoise", "decode", "total"):
        a, b = ref["timings_s"][key], ours["timings_s"][key]
        rows.append([key, f"{a:.2f}", f"{b:.2f}", f"{b / a:.3f}x" if a > 0 else "-"])
    rows.append(["peak GiB", f"{ref['peak_gib']:.1f}", f"{ours['peak_gib']:.1f}", ""])
    print(table(rows, ["stage", "diffusers s", "vidport s", "ratio"]))
    print(f"frames vs diffusers: mean |diff| {diff.mean():.2f}/255, max {diff.max()}, "
          f"{100 * (diff <= 1).mean():.1f}% of pixels within 1/255 ({dtype} over {args.steps} steps)")
    if args.json:
        for r in results.values():
            r.pop("frames")
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
