"""Attention backends: plain functions with one signature and one layout, in one table.

Every backend takes ``q, k, v`` as ``[batch, seq, heads, head_dim]`` plus an optional boolean
``key_mask`` of shape ``[batch, seq_k]`` (True = attend) and returns ``[batch, seq_q, heads, head_dim]``.
Backends are chosen by name through an explicit argument (``resolve_backend(name, device)``);
the environment variable ``VIDPORT_ATTENTION_BACKEND`` may override the choice (useful to force
``sdpa-math`` in a parity run without touching code). ``auto`` picks from ``AUTO_RULES``: data, measured
with ``benchmarks/bench_attention.py``.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from vidport.porting.errors import UserError

AttentionFn = Callable[..., torch.Tensor]
ENV_OVERRIDE = "VIDPORT_ATTENTION_BACKEND"


class AttentionBackendError(UserError, ValueError):
    """An unknown backend, or one that this machine cannot run; the message lists what can run."""


# ----------------------------------------------------------------------------------------------
# The backends
# ----------------------------------------------------------------------------------------------
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
    """PyTorch's FlashAttention-2 kernel (CUDA sm80+, and a CPU flash kernel)."""
    return _sdpa(q, k, v, key_mask, [SDPBackend.FLASH_ATTENTION])


def sdpa_cudnn(q, k, v, key_mask=None):
    """cuDNN's fused attention (CUDA sm80+): the fastest kernel measured on Hopper."""
    return _sdpa(q, k, v, key_mask, [SDPBackend.CUDNN_ATTENTION])


def sdpa_efficient(q, k, v, key_mask=None):
    """The memory-efficient (xFormers-derived) kernel (CUDA)."""
    return _sdpa(q, k, v, key_mask, [SDPBackend.EFFICIENT_ATTENTION])


def sdpa_math(q, k, v, key_mask=None):
    """The reference kernel: slow, exact, runs everywhere. Parity runs force it on both sides."""
    return _sdpa(q, k, v, key_mask, [SDPBackend.MATH])


def _no_key_mask(name: str, key_mask) -> None:
    if key_mask is not None and not bool(key_mask.all()):
        raise ValueError(f"the {name} backend takes no key mask; use an sdpa backend for padded keys")


def flash_attn(q, k, v, key_mask=None):
    """The flash-attn 2 package (``pip install vidport[flash]``); already [B, S, H, D]."""
    from flash_attn import flash_attn_func

    _no_key_mask("flash-attn", key_mask)
    return flash_attn_func(q, k, v)


FA4_TILE_ENV = "VIDPORT_FA4_TILE"
# flash-attn-4's sm90 forward tile for long key sequences (the self-attention) at head_dim 128, chosen with
# benchmarks/tune_fa4.py on an H100; "default" keeps the library's own table (128x128).
FA4_SM90_LONG_TILE = "192x128:rs:nool"
FA4_LONG_KEYS = 4096


def fa4_tile_kwargs(text: str) -> dict:
    """'128x176:rs:ol' (tile_m x tile_n; P in registers ``rs`` or shared memory ``ss``; intra-warpgroup
    overlap ``ol`` or ``nool``) -> keyword arguments of flash-attn-4's forward; 'default' -> none."""
    if text == "default":
        return {}
    try:
        tile, pv, overlap = text.split(":")
        m, n = (int(x) for x in tile.split("x"))
        if pv not in ("rs", "ss") or overlap not in ("ol", "nool") or m % 64 or n % 16:
            raise ValueError
    except ValueError:
        raise AttentionBackendError(
            f"flash-attn-4 tile {text!r} is not of the form MxN:rs|ss:ol|nool (M a multiple of 64, N of 16), "
            f"e.g. 128x176:rs:ol; fix {FA4_TILE_ENV} or unset it") from None
    return {"tile_mn": (m, n), "mma_pv_is_rs": pv == "rs", "intra_wg_overlap": overlap == "ol",
            "num_threads": 128 * (m // 64 + 1)}


def _fa4_kwargs(q: torch.Tensor, k: torch.Tensor) -> dict:
    text = os.environ.get(FA4_TILE_ENV)
    if text is None:
        hopper = torch.cuda.get_device_capability(q.device)[0] == 9
        long_keys = k.shape[1] >= FA4_LONG_KEYS and q.shape[-1] == 128
        text = FA4_SM90_LONG_TILE if hopper and long_keys else "default"
    return fa4_tile_kwargs(text)


@functools.cache
def _fa4_forward_with_tiles():
    """flash-attn-4's internal forward, which takes the tile arguments, when this version has it with
    them (it is not public API: another version may differ; then the public function runs)."""
    try:
        from flash_attn.cute.interface import _flash_attn_fwd
        params = inspect.signature(_flash_attn_fwd).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    needed = ("tile_mn", "mma_pv_is_rs", "intra_wg_overlap", "num_threads")
    return _flash_attn_fwd if all(p in params for p in needed) else None


@torch.library.custom_op("vidport::flash_attn_4", mutates_args=())
def _flash_attn_4_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    kwargs = _fa4_kwargs(q, k)
    forward = _fa4_forward_with_tiles() if kwargs else None
    if forward is not None:  # the forward flash_attn_func runs, called directly so that the tile can be set
        return forward(q, k, v, **kwargs)[0]
    from flash_attn.cute import flash_attn_func

    out = flash_attn_func(q, k, v)
    return out[0] if isinstance(out, tuple) else out


@_flash_attn_4_op.register_fake
def _(q, k, v):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def flash_attn_4(q, k, v, key_mask=None):
    """FlashAttention-4, the CuTe DSL kernels of flash-attn (``pip install vidport[flash4]``): on Hopper
    its warp-specialised sm90 forward (FA3's design), JIT-compiled once per shape; [B, S, H, D] in and out.
    A custom op, so that ``torch.compile(fullgraph=True)`` keeps it as one opaque call."""
    _no_key_mask("flash-attn-4", key_mask)
    return _flash_attn_4_op(q, k, v)


@dataclass(frozen=True)
class Backend:
    """A backend function and what it needs to run."""

    fn: AttentionFn
    devices: tuple[str, ...]  # torch device types
    min_capability: tuple[int, int] = (0, 0)  # CUDA compute capability, when on CUDA
    package: str | None = None  # an optional package it imports


BACKENDS: dict[str, Backend] = {
    "sdpa": Backend(sdpa, ("cpu", "cuda")),
    "sdpa-flash": Backend(sdpa_flash, ("cpu", "cuda"), (8, 0)),
    "sdpa-cudnn": Backend(sdpa_cudnn, ("cuda",), (8, 0)),
    "sdpa-efficient": Backend(sdpa_efficient, ("cuda",), (5, 0)),
    "sdpa-math": Backend(sdpa_math, ("cpu", "cuda")),
    "flash-attn": Backend(flash_attn, ("cuda",), (8, 0), package="flash_attn.flash_attn_interface"),
    "flash-attn-4": Backend(flash_attn_4, ("cuda",), (9, 0), package="flash_attn.cute"),
}


@dataclass(frozen=True)
class AutoRule:
    """``auto`` picks ``backend`` on a CUDA device of this major compute capability, for these dtypes and
    attention kinds ("self": video tokens to video tokens; "cross": video tokens to the 512 text tokens)."""

    capability_major: int
    dtypes: tuple[torch.dtype, ...]
    backend: str
    measured: str  # where the choice comes from
    kinds: tuple[str, ...] = ("self", "cross")


KINDS = ("self", "cross")
_HALF = (torch.bfloat16, torch.float16)

# First matching rule whose backend can run here wins; no match means "sdpa" (PyTorch's own choice).
AUTO_RULES: tuple[AutoRule, ...] = (
    AutoRule(9, _HALF, "flash-attn-4",
             "H100, Wan 1.3B self-attention (1x32760 tokens, 12 heads, head_dim 128, bf16): FlashAttention-4 "
             "9.70 ms (680 TFLOP/s; 9.28 ms with FA4_SM90_LONG_TILE), cuDNN 11.53 ms (572), SDPA flash 18.38, "
             "efficient 37.00",
             kinds=("self",)),
    AutoRule(9, _HALF, "sdpa-cudnn",
             "H100, same shape: cuDNN 572 TFLOP/s when FlashAttention-4 is not installed; cross-attention "
             "(32760 x 512 text tokens): cuDNN 0.28 ms, FlashAttention-4 0.34, SDPA flash 0.41"),
)


# ----------------------------------------------------------------------------------------------
# Choosing one
# ----------------------------------------------------------------------------------------------
def _device(device: torch.device | str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _can_run(spec: Backend, device: torch.device) -> bool:
    if device.type not in spec.devices:
        return False
    if device.type == "cuda":
        if not torch.cuda.is_available() or torch.cuda.get_device_capability(device) < spec.min_capability:
            return False
    return spec.package is None or _installed(spec.package)


def _installed(module: str) -> bool:
    try:  # a dotted name imports its parent package, which may be missing
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Backends this machine can run on ``device`` (default: CUDA if present, else CPU)."""
    device = _device(device)
    return [name for name, spec in BACKENDS.items() if _can_run(spec, device)]


def auto_backend(device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 kind: str = "self") -> str:
    """The fastest backend that is correct for the DiT's ``kind`` of attention on ``device`` (``AUTO_RULES``)."""
    if kind not in KINDS:
        raise ValueError(f"attention kind {kind!r} is not one of {KINDS}")
    device = _device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        major, _ = torch.cuda.get_device_capability(device)
        for rule in AUTO_RULES:
            if rule.capability_major == major and kind in rule.kinds and (dtype is None or dtype in rule.dtypes) \
                    and _can_run(BACKENDS[rule.backend], device):
                return rule.backend
    return "sdpa"


def resolve_backends(name: str | None, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> tuple[str, str]:
    """(self-attention backend, cross-attention backend): a named backend serves both, ``auto`` picks
    the fastest for each shape."""
    return tuple(resolve_backend(name, device, dtype, kind) for kind in KINDS)


def resolve_backend(name: str | None, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None, kind: str = "self") -> str:
    """Turn a requested backend (None or 'auto': the best for the device and ``kind`` of attention)
    into a runnable backend name.

    ``VIDPORT_ATTENTION_BACKEND``, when set, overrides the request. Raises ``AttentionBackendError``
    (one line, listing what can run here) for an unknown backend or one this machine cannot run.
    """
    name = os.environ.get(ENV_OVERRIDE) or name or "auto"
    if name == "auto":
        return auto_backend(device, dtype, kind)
    runnable = available_backends(device)
    where = f"{ENV_OVERRIDE}={name}" if os.environ.get(ENV_OVERRIDE) else repr(name)
    if name not in BACKENDS:
        raise AttentionBackendError(
            f"unknown attention backend {where}; runnable here: auto, {', '.join(runnable)}")
    if name not in runnable:
        raise AttentionBackendError(
            f"attention backend {where} cannot run on {_device(device)}; runnable here: auto, {', '.join(runnable)}")
    return name


def get_backend(name: str) -> AttentionFn:
    """The function of a backend name (no availability check; see ``resolve_backend``)."""
    try:
        return BACKENDS[name].fn
    except KeyError:
        raise AttentionBackendError(
            f"unknown attention backend {name!r}; choose one of: {', '.join(BACKENDS)}") from None
