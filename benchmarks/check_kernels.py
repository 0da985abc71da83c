"""Check the Triton kernels against their PyTorch reference paths (the same functions on CPU copies).

    python benchmarks/check_kernels.py                                 # on CUDA, at DiT-like shapes
    TRITON_INTERPRET=1 python benchmarks/check_kernels.py --interpret  # no GPU: Triton's CPU interpreter, small shapes

``--interpret`` runs each kernel's launch on CPU tensors through Triton's interpreter (TRITON_INTERPRET=1 must be set
before Triton is imported) against the same function's PyTorch reference path; tests/test_fused_kernels.py runs it
wherever Triton is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidport.runtime.kernels import fused  # noqa: E402
from vidport.runtime.models.wan.config import preset  # noqa: E402
from vidport.runtime.models.wan.model import rope_tables  # noqa: E402

from benchmarks.common import compare  # noqa: E402


def rel(a, b):
    return compare(a, b)["rel_l2"]


INTERPRET = False  # --interpret: the Triton path forced on CPU tensors (Triton's interpreter runs the kernels)


def against_reference(fn, *args, **kwargs):
    """fn on the CUDA tensors (Triton) and on CPU copies (the function's PyTorch reference path)."""
    cpu = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
    cpu_kwargs = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    if INTERPRET:
        with triton_path(True):
            got = fn(*args, **kwargs)
    else:
        got = fn(*args, **kwargs)
    want = fn(*cpu, **cpu_kwargs)
    if isinstance(got, tuple):
        return [rel(g.cpu(), w) for g, w in zip(got, want)]
    return rel(got.cpu(), want)


@contextlib.contextmanager
def triton_path(on: bool):
    """Within: every fused function takes its Triton path (``on``) or its PyTorch reference path."""
    use = fused._use_triton
    fused._use_triton = lambda x, other=None: on
    try:
        yield
    finally:
        fused._use_triton = use


def model_rows(dev: str, dtype: torch.dtype) -> dict[str, float]:
    """Both tiny DiTs with random weights: the forward through the Triton kernels (as the models call them: biases
    left to the residual kernels, blocks chained) vs the same model's PyTorch reference path, same dtype."""
    from vidport.runtime.models.ltx_video.config import preset as ltx_preset
    from vidport.runtime.models.ltx_video.model import LTXDiT
    from vidport.runtime.models.wan.model import WanDiT

    g = torch.Generator().manual_seed(0)

    def randomized(model):
        with torch.no_grad():
            for name, p in model.named_parameters():
                noise = torch.randn(p.shape, generator=g)
                p.copy_(noise * 0.5 / p.shape[-1] ** 0.5 if p.dim() > 1 else
                        (1 + 0.1 * noise if name.endswith("norm_q.weight") or name.endswith("norm_k.weight")
                         else 0.1 * noise))
        model.set_attention_backend("sdpa-math" if dev == "cpu" else "sdpa")
        return model.to(dev, dtype).eval()

    ltx = randomized(LTXDiT(ltx_preset("tiny")))
    wan = randomized(WanDiT(preset("tiny")))
    cfg = ltx_preset("tiny")
    x = torch.randn(2, 12, cfg.in_channels, generator=g).to(dev, dtype)
    text = torch.randn(2, 5, cfg.caption_channels, generator=g).to(dev, dtype)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], device=dev)
    t = torch.tensor([900.0, 100.0], device=dev)
    wx = torch.randn(2, 16, 3, 4, 6, generator=g).to(dev, dtype)
    ctx = torch.randn(2, 7, preset("tiny").text_dim, generator=g).to(dev, dtype)
    runs = {"ltx_dit[tiny, fused vs reference path]":
            lambda: ltx(x, text, t, mask, num_frames=2, height=2, width=3, rope_interpolation_scale=(8 / 25, 32, 32)),
            "wan_dit[tiny, fused vs reference path]": lambda: wan(wx, t, ctx)}
    rows = {}
    with torch.no_grad():
        for name, run in runs.items():
            with triton_path(True):
                got = run().float()
            with triton_path(False):
                want = run().float()
            rows[name] = rel(got.cpu(), want.cpu())
    return rows


def main(interpret: bool = False) -> None:
    assert fused.triton is not None, "no Triton here"
    global INTERPRET
    INTERPRET = interpret
    torch.manual_seed(0)
    # the interpreter runs each program in Python: a few tokens, Wan's head size 128 (its RoPE tables)
    small, dit = ((2, 6, 256, 2), (1, 2, 3), 512), ((2, 3000, 1536, 12), (3, 20, 50), 8960)
    (B, S, C, H), grid, ffn = small if interpret else dit
    # fp16 under the interpreter: numpy has no bf16, and the interpreter rounds to it coarsely (~4e-3 rel L2 alone)
    dev, bf = ("cpu", torch.float16) if interpret else ("cuda", torch.bfloat16)
    x = torch.randn(B, S, C, device=dev).to(bf)
    y = torch.randn(B, S, C, device=dev).to(bf)
    mul = 1 + 0.1 * torch.randn(B, 1, C, device=dev)
    add = 0.1 * torch.randn(B, 1, C, device=dev)
    qkv = torch.randn(B, S, 3 * C, device=dev).to(bf)
    w = 1 + 0.1 * torch.randn(C, device=dev)
    wk = 1 + 0.1 * torch.randn(C, device=dev)
    cos, sin = rope_tables(grid, preset("1.3b"), torch.device(dev))
    W = torch.randn(ffn, C, device=dev).to(bf) / C**0.5
    bias = 0.02 * torch.randn(ffn, device=dev).to(bf)
    y_bias = torch.randn(C, device=dev).to(bf)
    results = {
        "norm_modulate": against_reference(fused.norm_modulate, x, mul, add, 1e-6),
        "norm_modulate[rms]": against_reference(fused.norm_modulate, x, mul, add, 1e-6, rms=True),
        "gated_residual": against_reference(fused.gated_residual, x, y, add),
        "rms_norm": against_reference(fused.rms_norm, x, w, 1e-6),
        # rows evenly strided: k of a fused k/v projection (every other C-wide slice), no copy made
        "rms_norm[strided rows]": against_reference(fused.rms_norm, qkv[..., :2 * C].chunk(2, dim=-1)[0], w, 1e-6),
        **{f"residual_norm[gated={g}, {part}]": err for g in (True, False) for part, err in
           zip(("stream", "normed"), against_reference(fused.residual_norm, x, y, add if g else None, mul, add, 1e-6))},
        **{f"residual_norm[rms, {part}]": err for part, err in
           zip(("stream", "normed"), against_reference(fused.residual_norm, x, y, None, mul, add, 1e-6, rms=True))},
        "linear_gelu_tanh": against_reference(fused.linear_gelu_tanh, x, W, bias),
        # a projection's bias left to the residual kernel (as large as y, so a dropped bias fails the check)
        "gated_residual[bias]": against_reference(fused.gated_residual, x, y, add, y_bias),
        "rms_norm[bias]": against_reference(fused.rms_norm, x, w, 1e-6, y_bias),
        **{f"residual_norm[gated={g}, bias, {part}]": err for g in (True, False) for part, err in
           zip(("stream", "normed"), against_reference(fused.residual_norm, x, y, add if g else None, mul, add, 1e-6,
                                                       rms=True, bias=y_bias))},
    }
    for heads_first, v_view in ((True, False), (False, False), (False, True)):
        errors = against_reference(fused.qkv_norm_rope, qkv, w, wk, cos, sin, 1e-6, H, heads_first=heads_first,
                                   v_view=v_view)
        for name, err in zip("qkv", errors):
            results[f"qkv_norm_rope[{name}, heads_first={heads_first}, v_view={v_view}]"] = err
    # RoPE across heads (LTX-Video): one table row rotates the whole dim, cos/sin [S, C/2]
    from vidport.runtime.models.ltx_video.config import LTXDiTConfig
    from vidport.runtime.models.ltx_video.model import rope_tables as ltx_rope

    ltx = LTXDiTConfig(num_attention_heads=H, attention_head_dim=C // H)
    lcos, lsin = ltx_rope(grid, ltx, (8 / 25, 32, 32), torch.device(dev))
    errors = against_reference(fused.qkv_norm_rope, qkv, w, wk, lcos, lsin, 1e-5, H, heads_first=True, rope_dim=C)
    for name, err in zip("qkv", errors):
        results[f"qkv_norm_rope[{name}, across heads]"] = err
    models = model_rows(dev, bf)
    results.update(models)
    ok = True
    # fp16 on the CPU interpreter matches exactly (but for cuBLAS vs CPU GEMMs); a whole model rounds in other places
    tol = 1e-3 if INTERPRET else 1e-2
    for k, v in results.items():
        flag = v < (5e-3 if k in models else tol) and v == v
        ok &= flag
        print(f"kernel {k}: rel L2 vs reference {v:.2e} {'ok' if flag else 'FAIL'}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interpret", action="store_true",
                    help="no GPU: run the kernels under Triton's CPU interpreter (set TRITON_INTERPRET=1)")
    main(ap.parse_args().interpret)
