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


def build(frames: int, height: int, width: int):
    if os.environ.get("VIDPORT_BENCH_NO_TF32") == "1":  # --no-tf32: convolutions in full fp32 (torch's default: TF32)
        torch.backends.cudnn.allow_tf32 = False
    from diffusers import AutoencoderKLWan
    from vidport.runtime.models.wan.family import vae_config

    torch.manual_seed(0)
    with torch.device("cuda"):
        vae = AutoencoderKLWan(**vae_config("1.3b")).float().eval().requires_grad_(False)
    g = torch.Generator("cuda").manual_seed(1)
    z = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, device="cuda", generator=g)
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


def _tiled_on_ranks(worker, frames, height, width):
    import torch.distributed as dist
    from vidport.runtime.vae_tiling import tiled_decode

    vae, z = build(frames, height, width)
    with torch.no_grad():  # the ranks share the tiles (group: all of them)
        out, secs, peak = timed(lambda: tiled_decode(lambda c: vae.decode(c).sample, z, scale=8,
                                                     group=dist.group.WORLD))
    return {"seconds": secs, "peak_gib": peak, "checksum": float(out.double().sum())}


def _split_on_ranks(worker, frames, height, width, plain_path):
    import torch.distributed as dist
    from vidport.runtime.models.wan.vae_split import split_decode

    vae, z = build(frames, height, width)
    with torch.no_grad():
        out, secs, peak = timed(lambda: split_decode(vae, z, dist.group.WORLD))
    plain = torch.load(plain_path).cuda()
    d = (out.double() - plain.double())
    return {"seconds": secs, "peak_gib": peak, "max_abs": float(d.abs().max()),
            "rel_l2": float(d.norm() / plain.double().norm()),
            "levels_changed": float(((out * 127.5 + 127.5).round() != (plain * 127.5 + 127.5).round()).double().mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-gpus", type=int, default=2)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--no-tiled", dest="tiled", action="store_false", help="skip the tiled rows")
    ap.add_argument("--no-tf32", action="store_true",
                    help="convolutions in full fp32 (torch lets cuDNN use TF32 for them by default)")
    args = ap.parse_args()
    if args.no_tf32:
        os.environ["VIDPORT_BENCH_NO_TF32"] = "1"  # the ranks inherit it
    from vidport.runtime.vae_tiling import tiled_decode

    vae, z = build(args.frames, args.height, args.width)
    print(f"# {torch.cuda.get_device_name()}; Wan VAE decode of {args.frames}x{args.height}x{args.width}, fp32"
          f" (cuDNN TF32 {'off' if args.no_tf32 else 'on, torch default'})",
          flush=True)
    with torch.no_grad():
        plain, t_plain, m_plain = timed(lambda: vae.decode(z).sample)
        print(f"plain decode, 1 GPU: {t_plain:.2f} s, peak {m_plain:.1f} GiB", flush=True)
        if args.no_tf32:  # how far torch's default (TF32 convolutions) is from this full-fp32 decode
            torch.backends.cudnn.allow_tf32 = True
            tf32 = vae.decode(z).sample
            torch.backends.cudnn.allow_tf32 = False
            d = tf32.double() - plain.double()
            print(f"plain decode with TF32 convolutions vs without: max abs {float(d.abs().max()):.2e}, rel L2 "
                  f"{float(d.norm() / plain.double().norm()):.2e}", flush=True)
            tf32 = d = None
        if args.tiled:
            tiled, t_tiled, m_tiled = timed(lambda: tiled_decode(lambda c: vae.decode(c).sample, z, scale=8))
            print(f"tiled decode, 1 GPU: {t_tiled:.2f} s, peak {m_tiled:.1f} GiB", flush=True)
    if args.tiled:
        d = (tiled.double() - plain.double())
        print(f"tiled vs plain: rel L2 {float(d.norm() / plain.double().norm()):.3e}, max abs "
              f"{float(d.abs().max()):.3e}, mean |diff| {float(((tiled - plain) * 127.5).abs().mean()):.2f} levels",
              flush=True)
        checksum = float(tiled.double().sum())
    import tempfile

    plain_path = Path(tempfile.mkdtemp()) / "plain.pt"
    torch.save(plain.cpu(), plain_path)
    vae = z = plain = tiled = None  # free the GPU for the ranks
    torch.cuda.empty_cache()
    if args.num_gpus > 1:
        r = launch(_split_on_ranks, args.num_gpus, args.frames, args.height, args.width, plain_path, device="cuda")
        print(f"plain decode split by rows, {args.num_gpus} GPUs: {r['seconds']:.2f} s, peak {r['peak_gib']:.1f} GiB "
              f"per GPU; speed-up vs plain 1 GPU {t_plain / r['seconds']:.2f}x; vs the plain video: max abs "
              f"{r['max_abs']:.2e}, rel L2 {r['rel_l2']:.2e}, uint8 values changed {100 * r['levels_changed']:.4f}%",
              flush=True)
    if args.num_gpus > 1 and args.tiled:
        r = launch(_tiled_on_ranks, args.num_gpus, args.frames, args.height, args.width, device="cuda")
        print(f"tiled decode, {args.num_gpus} GPUs: {r['seconds']:.2f} s, peak {r['peak_gib']:.1f} GiB per GPU; "
              f"speed-up vs tiled 1 GPU {t_tiled / r['seconds']:.2f}x, vs plain {t_plain / r['seconds']:.2f}x; "
              f"same frames as 1 GPU: {r['checksum'] == checksum}", flush=True)


if __name__ == "__main__":
    main()
