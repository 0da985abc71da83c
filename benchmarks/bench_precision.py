"""The native Wan DiT's two bf16 recipes, error and time: ``fast`` (residual stream in bf16, as diffusers) vs
``official`` (stream, norms, modulation and head in fp32 around bf16 GEMMs and attention, as the official
generator's fp32 parameters under ``autocast(bf16)``).

    python benchmarks/bench_precision.py                          # 1.3B, 81x480x832 (32760 tokens)
    python benchmarks/bench_precision.py --official-root WAN2.1   # + the official WanModel under autocast

One process, one GPU, the same random weights (diffusers' init) in every model: the error of each recipe
against diffusers' ``WanTransformer3DModel`` in fp32 (and, with ``--official-root``, against the official
``WanModel`` run as its generator runs it: fp32 parameters under ``autocast(bf16)``, its flash_attention
through vidport's SDPA shim when flash-attn is absent); each recipe's fused CUDA path against its PyTorch
reference path; then both forwards timed (CUDA-event medians after warm-up, rounds alternating, the faster
median of the rounds kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidport.runtime import attention  # noqa: E402
from vidport.runtime.kernels import fused  # noqa: E402
from vidport.runtime.models.wan.config import preset  # noqa: E402
from vidport.runtime.models.wan.model import WanDiT  # noqa: E402

from benchmarks.common import compare, diffusers_wan, median_ms, native_from_diffusers  # noqa: E402


def official_reference(root: Path, ref32, cfg, x, t, ctx, tokens: int, device: str) -> dict:
    """The official WanModel with the same weights: fp32, and bf16 under autocast as its generator runs."""
    from vidport.porting.namemap import NameMap
    from vidport.runtime.models.wan import family
    from vidport.runtime.models.wan.parity import official_code

    code = official_code(root, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = code.model.WanModel(**{k: v for k, v in cfg.to_official().items() if not k.startswith("_")})
    state = NameMap.load(family.OFFICIAL_TO_DIFFUSERS["transformer"]).reverse().apply(ref32.state_dict())
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model = model.to(device).eval().requires_grad_(False)

    def run(autocast: bool):
        with torch.no_grad(), warnings.catch_warnings(), torch.autocast(device, torch.bfloat16, enabled=autocast):
            warnings.simplefilter("ignore")
            # fp32 inputs holding the bf16 values: autocast rounds them to bf16 at each GEMM
            return torch.stack(model(list(x.float()), t=t, context=list(ctx.float()), seq_len=tokens)).float()

    return {"official_fp32": run(False), "official_autocast_bf16": run(True), "substituted": code.substituted,
            "where": code.where}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="1.3b")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--official-root", type=Path, default=None,
                    help="a checkout of Wan-Video/Wan2.1: also compare with the official WanModel")
    ap.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (a smoke run, --preset tiny)")
    ap.add_argument("--json", type=Path, help="write all numbers here")
    args = ap.parse_args()

    import diffusers

    cfg = preset(args.preset)
    lat_f, lat_h, lat_w = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    tokens = lat_f * (lat_h // 2) * (lat_w // 2)
    dev = args.device
    auto = attention.resolve_backends("auto", dev, torch.bfloat16)
    out: dict = {"gpu": torch.cuda.get_device_name() if dev.startswith("cuda") else dev, "torch": torch.__version__,
                 "diffusers": diffusers.__version__, "preset": args.preset, "latent": [lat_f, lat_h, lat_w],
                 "tokens": tokens, "attention": list(auto)}
    print(f"# {out['gpu']}, torch {out['torch']}, diffusers {out['diffusers']}; Wan {args.preset}, "
          f"{args.frames}x{args.height}x{args.width} -> {tokens} tokens; attention {auto[0]} + {auto[1]}", flush=True)

    ref32 = diffusers_wan(cfg, device=dev, dtype=torch.float32)
    models = {"fast": native_from_diffusers(ref32, cfg, device=dev),
              "official": native_from_diffusers(ref32, cfg, device=dev, keep_fp32=WanDiT.OFFICIAL_FP32_MODULES)}
    models["official"].set_precision("official")
    for m in models.values():
        m.set_attention_backend(*auto)
    g = torch.Generator(dev).manual_seed(0)
    x = torch.randn(1, cfg.in_dim, lat_f, lat_h, lat_w, device=dev, generator=g).to(torch.bfloat16)
    t = torch.tensor([500], device=dev)
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, device=dev, generator=g).to(torch.bfloat16)

    # --- errors ------------------------------------------------------------------------------------------------
    errors, y = {}, {}
    with torch.no_grad():
        y32 = ref32(x.float(), t, ctx.float(), return_dict=False)[0].float()
        for name, m in models.items():
            y[name] = m(x, t, ctx).float()
            errors[f"{name}_vs_fp32"] = compare(y[name], y32)
            saved, fused.triton = fused.triton, None  # the PyTorch reference path of the same recipe
            try:
                errors[f"{name}_fused_vs_unfused"] = compare(y[name], m(x, t, ctx).float())
            finally:
                fused.triton = saved
    del ref32
    torch.cuda.empty_cache()
    if args.official_root is not None:
        try:
            off = official_reference(args.official_root, diffusers_wan(cfg, device=dev, dtype=torch.float32), cfg,
                                     x, t, ctx, tokens, dev)
        except Exception as e:  # noqa: BLE001 - the timings below still matter
            print(f"official reference failed: {type(e).__name__}: {e}", flush=True)
        else:
            out["official_code"] = {"where": off["where"], "substituted": off["substituted"]}
            errors["official_fp32_vs_fp32"] = compare(off["official_fp32"], y32)
            errors["official_autocast_vs_fp32"] = compare(off["official_autocast_bf16"], y32)
            for name in models:
                errors[f"{name}_vs_official_autocast"] = compare(y[name], off["official_autocast_bf16"])
            del off
    del y32, y
    torch.cuda.empty_cache()
    out["errors"] = errors
    for k, v in errors.items():
        print(f"{k}: max_abs {v['max_abs']:.3e} rel_l2 {v['rel_l2']:.3e} cosine {v['cosine']:.6f}", flush=True)

    # --- times ----------------------------------------------------------------------------------------------
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(args.rounds):
        for name, m in models.items():
            with torch.no_grad():
                ms = median_ms(lambda m=m: m(x, t, ctx), warmup=2, repeats=args.repeats, device=dev)
            times[name].append(ms)
            print(f"round {r + 1} {name}: {ms:.1f} ms", flush=True)
    out["times_ms"] = {name: {"rounds": v, "best": min(v)} for name, v in times.items()}
    cost = min(times["official"]) / min(times["fast"]) - 1
    out["official_cost"] = cost
    print(f"official precision costs {cost:+.2%} of the DiT forward ({min(times['official']):.1f} vs "
          f"{min(times['fast']):.1f} ms)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
