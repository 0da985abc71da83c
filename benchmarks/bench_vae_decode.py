"""Wan VAE decode: plain vs tiled on one GPU vs tiled split across N GPUs vs the plain decode split by rows across
N GPUs (issue 22), random weights at the real size.

    python benchmarks/bench_vae_decode.py [--num-gpus 2] [--frames 81 --height 480 --width 832] [--no-tiled]

Every rank builds the same seeded AutoencoderKLWan (the 1.3B/14B release's VAE config) in fp32 and the same latents;
the plain decode is ``vae.decode``; the tiled one is ``runtime.vae_tiling.tiled_decode`` with the VAE's own decode of
each crop (the Wan pipeline's path); the row split is ``runtime.models.wan.vae_split.split_decode`` (what an untiled
multi-GPU generation runs). Reports seconds (one warm-up, then the median of two), peak GPU memory, and each video's
distance from the plain one (random weights: the seams of a trained VAE are smaller; the row split has none).
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

from vidport.runtime.parallel import launch  # noqa: E402


def build(frames: int, height: int, width: int, scale: float = 1.0):
    if os.environ.get("VIDPORT_BENCH_NO_TF32") == "1":  # --no-tf32: convolutions in full fp32 (torch's default: TF32)
        torch.backends.cudnn.allow_tf32 = False
    from diffusers import AutoencoderKLWan
    from vidport.runtime.models.wan.family import vae_config

    torch.manual_seed(0)
    with torch.device("cuda"):
        vae = AutoencoderKLWan(**vae_config("1.3b")).float().eval().requires_grad_(False)
    g = torch.Generator("cuda").manual_seed(1)
    z = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, device="cuda", generator=g) * scale
    return vae, z


def timed(fn, repeats: int = 2):
    fn()  # warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times), torch.cuda.max_memory_allocated() / 2**30


def _tiled_on_ranks(worker, frames, height, width, scale):
    import torch.distributed as dist
    from vidport.runtime.vae_tiling import tiled_decode

    vae, z = build(frames, height, width, scale)
    with torch.no_grad():  # the ranks share the tiles (group: all of them)
        out, secs, peak = timed(lambda: tiled_decode(lambda c: vae.decode(c).sample, z, scale=8,
                                                     group=dist.group.WORLD))
    return {"seconds": secs, "peak_gib": peak, "checksum": float(out.double().sum())}


def distance(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """How far a decoded video is from ``ref``: max abs, rel L2, and in uint8 levels (the mp4's values)."""
    d = out.double() - ref.double()
    levels = ((out.clamp(-1, 1) + 1) * 127.5).round() - ((ref.clamp(-1, 1) + 1) * 127.5).round()
    return {"max_abs": float(d.abs().max()), "rel_l2": float(d.norm() / ref.double().norm()),
            "levels_mean": float(levels.abs().mean()), "levels_max": int(levels.abs().max()),
            "levels_changed": float((levels != 0).double().mean())}


def describe(r: dict) -> str:
    return (f"max abs {r['max_abs']:.2e}, rel L2 {r['rel_l2']:.2e}; uint8: mean |diff| {r['levels_mean']:.3f}, max "
            f"{r['levels_max']}, {100 * r['levels_changed']:.2f}% of values changed")


def _split_on_ranks(worker, frames, height, width, scale, refs):
    import torch.distributed as dist
    from vidport.runtime.models.wan.vae_split import split_decode

    vae, z = build(frames, height, width, scale)
    with torch.no_grad():
        out, secs, peak = timed(lambda: split_decode(vae, z, dist.group.WORLD))
    return {"seconds": secs, "peak_gib": peak,
            **{name: distance(out, torch.load(path).cuda()) for name, path in refs.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-gpus", type=int, default=2)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--no-tiled", dest="tiled", action="store_false", help="skip the tiled rows")
    ap.add_argument("--latent-scale", type=float, default=1.0,
                    help="multiply the N(0, 1) latents (a random-weight DiT's denoised latents are far larger)")
    ap.add_argument("--no-tf32", action="store_true",
                    help="convolutions in full fp32 (torch lets cuDNN use TF32 for them by default)")
    args = ap.parse_args()
    if args.no_tf32:
        os.environ["VIDPORT_BENCH_NO_TF32"] = "1"  # the ranks inherit it
    from vidport.runtime.vae_tiling import tiled_decode

    vae, z = build(args.frames, args.height, args.width, args.latent_scale)
    print(f"# {torch.cuda.get_device_name()}; Wan VAE decode of {args.frames}x{args.height}x{args.width}, fp32"
          f" (cuDNN TF32 {'off' if args.no_tf32 else 'on, torch default'}), latents N(0, 1) x {args.latent_scale:g}",
          flush=True)
    import tempfile

    folder = Path(tempfile.mkdtemp())
    refs = {"plain": folder / "plain.pt"}
    with torch.no_grad():
        plain, t_plain, m_plain = timed(lambda: vae.decode(z).sample)
        print(f"plain decode, 1 GPU: {t_plain:.2f} s, peak {m_plain:.1f} GiB; output mean |x| "
              f"{float(plain.abs().mean()):.3f}, {100 * float((plain.abs() >= 1).double().mean()):.1f}% clipped",
              flush=True)
        if not args.no_tf32:  # the exact decode (full fp32 convolutions), the reference both decodes are judged by
            torch.backends.cudnn.allow_tf32 = False
            exact = vae.decode(z).sample
            torch.backends.cudnn.allow_tf32 = True
            print(f"plain decode (TF32) vs full fp32: {describe(distance(plain, exact))}", flush=True)
            refs["full fp32"] = folder / "exact.pt"
            torch.save(exact.cpu(), refs["full fp32"])
            exact = None
        if args.tiled:
            tiled, t_tiled, m_tiled = timed(lambda: tiled_decode(lambda c: vae.decode(c).sample, z, scale=8))
            print(f"tiled decode, 1 GPU: {t_tiled:.2f} s, peak {m_tiled:.1f} GiB", flush=True)
    if args.tiled:
        d = (tiled.double() - plain.double())
        print(f"tiled vs plain: rel L2 {float(d.norm() / plain.double().norm()):.3e}, max abs "
              f"{float(d.abs().max()):.3e}, mean |diff| {float(((tiled - plain) * 127.5).abs().mean()):.2f} levels",
              flush=True)
        checksum = float(tiled.double().sum())
    torch.save(plain.cpu(), refs["plain"])
    vae = z = plain = tiled = None  # free the GPU for the ranks
    torch.cuda.empty_cache()
    if args.num_gpus > 1:
        r = launch(_split_on_ranks, args.num_gpus, args.frames, args.height, args.width, args.latent_scale,
                   {k: str(v) for k, v in refs.items()}, device="cuda")
        print(f"plain decode split by rows, {args.num_gpus} GPUs: {r['seconds']:.2f} s, peak {r['peak_gib']:.1f} GiB "
              f"per GPU; speed-up vs plain 1 GPU {t_plain / r['seconds']:.2f}x", flush=True)
        for name in refs:
            print(f"  split vs {name} 1 GPU: {describe(r[name])}", flush=True)
    if args.num_gpus > 1 and args.tiled:
        r = launch(_tiled_on_ranks, args.num_gpus, args.frames, args.height, args.width, args.latent_scale,
                   device="cuda")
        print(f"tiled decode, {args.num_gpus} GPUs: {r['seconds']:.2f} s, peak {r['peak_gib']:.1f} GiB per GPU; "
              f"speed-up vs tiled 1 GPU {t_tiled / r['seconds']:.2f}x, vs plain {t_plain / r['seconds']:.2f}x; "
              f"same frames as 1 GPU: {r['checksum'] == checksum}", flush=True)


if __name__ == "__main__":
    main()
