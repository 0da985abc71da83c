"""Attention backends: plain functions with one signature and one layout.

Every backend takes ``q, k, v`` as ``[batch, seq, heads, head_dim]`` plus an optional boolean
``key_mask`` of shape ``[batch, seq_k]`` (True = attend) and returns ``[batch, seq_q, heads, head_dim]``.
Backends are chosen by name through an explicit argument; ``VIDPORT_ATTENTION_BACKEND`` may override
the choice (useful to force ``sdpa-math`` in a parity run without touching code).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

AttentionFn = Callable[..., torch.Tensor]
ENV_OVERRIDE = "VIDPORT_ATTENTION_BACKEND"


def _sdpa(q, k, v, key_mask=None, kernels=None):
    # SDPA wants [B, H, S, D]; transposes are views, the kernels take strided inputs.
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    mask = None if key_mask is None else key_mask[:, None, None, :]
    if kernels is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        with sdpa_kernel(kernels):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2)


def sdpa(q, k, v, key_mask=None):
    """PyTorch chooses the kernel."""
    return _sdpa(q, k, v, key_mask)


def sdpa_flash(q, k, v, key_mask=None):
    return _sdpa(q, k, v, key_mask, [SDPBackend.FLASH_ATTENTION])


def sdpa_cudnn(q, k, v, key_mask=None):
    return _sdpa(q, k, v, key_mask, [SDPBackend.CUDNN_ATTENTION])


def sdpa_efficient(q, k, v, key_mask=None):
    return _sdpa(q, k, v, key_mask, [SDPBackend.EFFICIENT_ATTENTION])


def sdpa_math(q, k, v, key_mask=None):
    """The reference kernel: slow, exact, runs everywhere. Parity runs force it on both sides."""
    return _sdpa(q, k, v, key_mask, [SDPBackend.MATH])


def flash_attn(q, k, v, key_mask=None):
    """The flash-attn package (``pip install vidport[flash]``); already [B, S, H, D]."""
    from flash_attn import flash_attn_func

    if key_mask is not None:
        if not bool(key_mask.all()):
            raise ValueError("the flash-attn backend takes no key mask; use an sdpa backend for padded keys")
    return flash_attn_func(q, k, v)


BACKENDS: dict[str, AttentionFn] = {
    "sdpa": sdpa,
    "sdpa-flash": sdpa_flash,
    "sdpa-cudnn": sdpa_cudnn,
    "sdpa-efficient": sdpa_efficient,
    "sdpa-math": sdpa_math,
    "flash-attn": flash_attn,
}


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Backends this machine can run on ``device`` (default: CUDA if present, else CPU)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    names = ["sdpa", "sdpa-math"]
    if device.type == "cuda" and torch.cuda.is_available():
        major, _ = torch.cuda.get_device_capability(device)
        names += ["sdpa-efficient"]
        if major >= 8:
            names += ["sdpa-flash", "sdpa-cudnn"]
            try:
                import flash_attn  # noqa: F401

                names.append("flash-attn")
            except ImportError:
                pass
    elif device.type == "cpu":
        names.append("sdpa-flash")  # PyTorch has a CPU flash kernel
    return [n for n in BACKENDS if n in names]


def resolve_backend(name: str | None, device: torch.device | str | None = None) -> str:
    """Turn a requested backend (None/'auto' = best for the device) into a runnable backend name.

    The environment variable ``VIDPORT_ATTENTION_BACKEND`` overrides the request.
    """
    name = os.environ.get(ENV_OVERRIDE) or name or "auto"
    runnable = available_backends(device)
    if name == "auto":
        return auto_backend(device)
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of: auto, {', '.join(BACKENDS)}")
    if name not in runnable:
        raise ValueError(
            f"attention backend {name!r} cannot run on this machine; available here: {', '.join(runnable)}"
        )
    return name


def auto_backend(device: torch.device | str | None = None) -> str:
    """Fastest backend that is correct for the DiT's shapes on this device.

    On Hopper (sm90) cuDNN attention is the fastest measured kernel at Wan's shapes (see BENCHMARKS.md);
    elsewhere PyTorch's own choice is good.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and torch.cuda.is_available():
        major, _ = torch.cuda.get_device_capability(device)
        if major == 9:
            return "sdpa-cudnn"
    return "sdpa"


def get_backend(name: str) -> AttentionFn:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}; choose one of: {', '.join(BACKENDS)}") from None
