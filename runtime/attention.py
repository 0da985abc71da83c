"""Attention backends: plain functions with one signature and one layout, in one table.

Every backend takes ``q, k, v`` as ``[batch, seq, heads, head_dim]`` plus an optional boolean
``key_mask`` of shape ``[batch, seq_k]`` (True = attend) and returns ``[batch, seq_q, heads, head_dim]``.
Backends are chosen by name through an explicit argument (``resolve_backend(name, device)``);
the environment variable ``VIDPORT_ATTENTION_BACKEND`` sets the default when no name is given (useful to
force ``sdpa-math`` in a parity run without touching code). ``auto`` picks from ``AUTO_RULES``: data,
measured with ``benchmarks/bench_attention.py``.

A backend is available when it suits the device and a probe passes: its module imports and a tiny call
runs on the device in the dtype. The probe runs once per (backend, device type, dtype), when a backend
is resolved, never per call. ``auto`` skips what is unavailable and says once, in one line, what it took
instead and why; a named backend that is unavailable is one line naming what is missing.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from vidport.devices import default_device
from vidport.errors import UserError

AttentionFn = Callable[..., torch.Tensor]
ENV_OVERRIDE = "VIDPORT_ATTENTION_BACKEND"  # the default backend when none is named
log = logging.getLogger(__name__)


class AttentionBackendError(UserError, ValueError):
    """An unknown backend, or one that this machine cannot run; the message lists what can run."""


# ----------------------------------------------------------------------------------------------
# The backends
# ----------------------------------------------------------------------------------------------
def _sdpa(q, k, v, key_mask=None, kernels=None):
    # SDPA wants [B, H, S, D]; transposes are views, the kernels take strided inputs.
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    # the boolean key mask as an additive one in a single pass (SDPA's own conversion takes three kernels)
    mask = None if key_mask is None else \
        torch.where(key_mask, 0.0, float("-inf")).to(q.dtype)[:, None, None, :]
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


_FA4_SM90_LONG_KWARGS = fa4_tile_kwargs(FA4_SM90_LONG_TILE)


@dataclass(frozen=True)
class FA4Tiles:
    """flash-attn-4's forward tile on one device, decided when the backend is resolved there."""

    override: dict | None  # VIDPORT_FA4_TILE's arguments; None: by shape below
    hopper: bool

    def kwargs(self, q: torch.Tensor, k: torch.Tensor) -> dict:
        if self.override is not None:
            return self.override
        long_keys = k.shape[1] >= FA4_LONG_KEYS and q.shape[-1] == 128
        return _FA4_SM90_LONG_KWARGS if self.hopper and long_keys else {}


# device index -> its tile; written when flash-attn-4 is resolved, so the op reads no environment per call
_FA4_TILES: dict[int | None, FA4Tiles] = {}


def _device_index(device: torch.device) -> int | None:
    if device.type == "cuda" and device.index is None:
        return torch.cuda.current_device()
    return device.index


def resolve_fa4_tiles(device: torch.device | str) -> FA4Tiles:
    """Read ``VIDPORT_FA4_TILE`` and the GPU's generation once, for flash-attn-4 on ``device`` (a malformed
    value is one line naming the variable)."""
    device = torch.device(device)
    text = os.environ.get(FA4_TILE_ENV)
    tiles = FA4Tiles(None if text is None else fa4_tile_kwargs(text),
                     torch.cuda.get_device_capability(device)[0] == 9)
    _FA4_TILES[_device_index(device)] = tiles
    return tiles


def _fa4_kwargs(q: torch.Tensor, k: torch.Tensor) -> dict:
    tiles = _FA4_TILES.get(_device_index(q.device))
    if tiles is None:  # called without resolving (a benchmark timing the function itself): decide now, once
        tiles = resolve_fa4_tiles(q.device)
    return tiles.kwargs(q, k)


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


def _fa4_install() -> str:
    # the CuTe DSL wheels follow the CUDA major version
    return "pip install 'flash-attn-4[cu13]'" if (torch.version.cuda or "").startswith("13") \
        else "pip install flash-attn-4"


@dataclass(frozen=True)
class Backend:
    """A backend function and what it needs to run."""

    fn: AttentionFn
    devices: tuple[str, ...]  # torch device types
    min_capability: tuple[int, int] = (0, 0)  # CUDA compute capability, when on CUDA
    module: str | None = None  # the optional package module it imports
    install: str = ""  # the command that installs that package
    missing: str = "a module it imports is missing"  # what it lacks when the package imports only in part
    configure: Callable[[torch.device], object] | None = None  # settings read once, when it is resolved
    # False: a persistent kernel that holds every SM until it ends, so a collective started beside it waits, and
    # Ulysses does not pipeline its exchange around it (runtime.parallel.ulysses.pipeline_chunks)
    leaves_sms: bool = True


BACKENDS: dict[str, Backend] = {
    "sdpa": Backend(sdpa, ("cpu", "cuda")),
    "sdpa-flash": Backend(sdpa_flash, ("cpu", "cuda"), (8, 0)),
    "sdpa-cudnn": Backend(sdpa_cudnn, ("cuda",), (8, 0)),
    "sdpa-efficient": Backend(sdpa_efficient, ("cuda",), (5, 0)),
    "sdpa-math": Backend(sdpa_math, ("cpu", "cuda")),
    "flash-attn": Backend(flash_attn, ("cuda",), (8, 0), module="flash_attn.flash_attn_interface",
                          install="pip install flash-attn --no-build-isolation",
                          missing="its CUDA extension is missing"),
    "flash-attn-4": Backend(flash_attn_4, ("cuda",), (9, 0), module="flash_attn.cute", install=_fa4_install(),
                            missing="its CuTe DSL libraries are missing", configure=resolve_fa4_tiles,
                            leaves_sms=False),
}


def leaves_sms(name: str) -> bool:
    """Whether a backend's kernel leaves room on the GPU for a collective running beside it (``Backend``)."""
    backend = BACKENDS.get(name)
    return backend is None or backend.leaves_sms


@dataclass(frozen=True)
class AutoRule:
    """``auto`` picks ``backend`` on a device of this type (on CUDA: of this major compute capability), for
    these dtypes and attention kinds ("self": video tokens to video tokens; "cross": video tokens to the 512
    text tokens)."""

    capability_major: int | None  # None: any (a CPU rule)
    dtypes: tuple[torch.dtype, ...]
    backend: str
    measured: str  # where the choice comes from
    kinds: tuple[str, ...] = ("self", "cross")
    device_type: str = "cuda"
    head_dims: tuple[int, ...] | None = None  # None: any head size

    def matches(self, device_type: str, capability_major: int | None, dtype: torch.dtype | None, kind: str,
                head_dim: int | None = None) -> bool:
        """``head_dim`` None (not known): a rule for some head sizes only still matches."""
        return (self.device_type == device_type and kind in self.kinds and (dtype is None or dtype in self.dtypes)
                and self.capability_major in (None, capability_major)
                and (self.head_dims is None or head_dim is None or head_dim in self.head_dims))


KINDS = ("self", "cross")
_HALF = (torch.bfloat16, torch.float16)

# First matching rule whose backend is available wins; no match means "sdpa" (PyTorch's own choice).
AUTO_RULES: tuple[AutoRule, ...] = (
    AutoRule(9, _HALF, "flash-attn-4",
             "H100, self-attention of 1x32760 tokens, 12 heads, head_dim 128, bf16: FlashAttention-4 "
             "9.70 ms (680 TFLOP/s; 9.28 ms with FA4_SM90_LONG_TILE), cuDNN 11.53 ms (572), SDPA flash 18.38, "
             "efficient 37.00. H200 (2026-11-28): 9.44 ms (699) vs cuDNN 11.67 (565). Not at head_dim 64 "
             "(1x5280 tokens, 32 heads, H200): FlashAttention-4 0.74 ms, cuDNN 0.72, SDPA's own choice 0.68",
             kinds=("self",), head_dims=(128,)),
    AutoRule(9, _HALF, "sdpa-cudnn",
             "H100, same shape: cuDNN 572 TFLOP/s when FlashAttention-4 is not installed; cross-attention "
             "(32760 x 512 text tokens): cuDNN 0.28 ms, FlashAttention-4 0.34, SDPA flash 0.41"),
)
FALLBACK = "sdpa"


# ----------------------------------------------------------------------------------------------
# Availability: suits the device, imports, and a tiny call runs
# ----------------------------------------------------------------------------------------------
def _device(device: torch.device | str | None) -> torch.device:
    return default_device(device)


def _probe_dtype(device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    # what the generator runs when no dtype is given
    return dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


NOT_INSTALLED = "is not installed"


def _broken(name: str, spec: Backend, e: BaseException, doing: str) -> str:
    if isinstance(e, ModuleNotFoundError) and e.name and spec.module and \
            (spec.module == e.name or spec.module.startswith(e.name + ".")):
        return f"{name} {NOT_INSTALLED} ({spec.install})"
    if isinstance(e, ModuleNotFoundError):  # the package is there, something it imports is not
        return f"{name} is installed but {spec.missing} ({_first_line(e)}): {spec.install}"
    return f"{name} fails {doing} ({type(e).__name__}: {_first_line(e)})"


@functools.cache
def _probe(name: str, spec: Backend, device_type: str, dtype: torch.dtype) -> str | None:
    """Why ``spec`` does not run on the current device of ``device_type`` in ``dtype``, or None: its module
    imports and a tiny call returns a finite result of the right shape. Once per process and key."""
    if spec.module is not None:
        try:
            importlib.import_module(spec.module)
        except Exception as e:  # noqa: BLE001 - a broken package raises anything on import
            return _broken(name, spec, e, "to import")
    q, k, v = torch.randn(3, 1, 128, 2, 64, generator=torch.Generator().manual_seed(0)).to(device_type, dtype)
    try:
        with warnings.catch_warnings():
            # SDPA explains at length why a kernel it was told to use cannot run; the reason below says it in a line
            warnings.simplefilter("ignore")
            out = spec.fn(q, k, v)
        ok = out.shape == q.shape and bool(torch.isfinite(out).all())
    except Exception as e:  # noqa: BLE001 - a kernel that cannot run raises anything
        return _broken(name, spec, e, f"on {device_type} in {str(dtype).removeprefix('torch.')}")
    return None if ok else f"{name} returns a wrong result on {device_type} (non-finite or misshaped)"


def why_unavailable(name: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None, *,
                    backends: Mapping[str, Backend] = BACKENDS) -> str | None:
    """Why backend ``name`` cannot run on ``device`` in ``dtype`` (one line, with the fix), or None if it can."""
    spec, device = backends[name], _device(device)
    if device.type not in spec.devices:
        return "needs CUDA" if spec.devices == ("cuda",) else f"runs on {' or '.join(spec.devices)} only"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "needs CUDA"
        have = torch.cuda.get_device_capability(device)
        if have < spec.min_capability:
            return (f"needs a GPU of compute capability {'.'.join(map(str, spec.min_capability))} or newer "
                    f"(this one: {'.'.join(map(str, have))})")
    reason = _probe(name, spec, device.type, _probe_dtype(device, dtype))
    if reason is None and spec.configure is not None:
        spec.configure(device)
    return reason


def available_backends(device: torch.device | str | None = None, dtype: torch.dtype | None = None, *,
                       backends: Mapping[str, Backend] = BACKENDS) -> list[str]:
    """Backends that run on ``device`` (default: CUDA if present, else CPU) in ``dtype``."""
    return [name for name in backends if why_unavailable(name, device, dtype, backends=backends) is None]


# ----------------------------------------------------------------------------------------------
# Choosing one
# ----------------------------------------------------------------------------------------------
def auto_candidates(device: torch.device | str | None = None, dtype: torch.dtype | None = None, kind: str = "self",
                    *, head_dim: int | None = None, rules: Sequence[AutoRule] = AUTO_RULES) -> list[str]:
    """The backends ``auto`` tries, best first, by the rules alone (not whether they run here); ``head_dim``: the
    model's head size, when known."""
    if kind not in KINDS:
        raise ValueError(f"attention kind {kind!r} is not one of {KINDS}")
    device = _device(device)
    major = None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return []
        major = torch.cuda.get_device_capability(device)[0]
    return [rule.backend for rule in rules if rule.matches(device.type, major, dtype, kind, head_dim)]


_SAID: set[str] = set()  # auto's fallback lines already logged by this process


def _say_once(level: int, line: str) -> None:
    if line not in _SAID:
        _SAID.add(line)
        log.log(level, line)


def auto_backend(device: torch.device | str | None = None, dtype: torch.dtype | None = None, kind: str = "self",
                 *, head_dim: int | None = None, backends: Mapping[str, Backend] = BACKENDS,
                 rules: Sequence[AutoRule] = AUTO_RULES) -> str:
    """The fastest backend that is correct for the DiT's ``kind`` of attention on ``device`` (``AUTO_RULES``)
    and that is available; what it skips is logged once, in one line, with the backend taken instead."""
    skipped, chosen = [], FALLBACK
    for name in auto_candidates(device, dtype, kind, head_dim=head_dim, rules=rules):
        reason = why_unavailable(name, device, dtype, backends=backends)
        if reason is None:
            chosen = name
            break
        skipped.append(reason)
    if skipped:
        # a package left out is a choice; one installed but broken is worth a warning
        broken = any(NOT_INSTALLED not in r for r in skipped)
        _say_once(logging.WARNING if broken else logging.INFO,
                  f"vidport attention: {'; '.join(skipped)}; using {chosen}")
    return chosen


def resolve_backends(name: str | None, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None, *, head_dim: int | None = None,
                     backends: Mapping[str, Backend] = BACKENDS, rules: Sequence[AutoRule] = AUTO_RULES
                     ) -> tuple[str, str]:
    """(self-attention backend, cross-attention backend): a named backend serves both, ``auto`` picks
    the fastest for each shape (``head_dim``: the model's head size, when known)."""
    return tuple(resolve_backend(name, device, dtype, kind, head_dim=head_dim, backends=backends, rules=rules)
                 for kind in KINDS)


def resolve_backend(name: str | None, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None, kind: str = "self", *, head_dim: int | None = None,
                    backends: Mapping[str, Backend] = BACKENDS, rules: Sequence[AutoRule] = AUTO_RULES) -> str:
    """Turn a requested backend (None: ``VIDPORT_ATTENTION_BACKEND`` if set, else 'auto'; 'auto': the best
    available for the device, dtype and ``kind`` of attention) into a backend name that runs here.

    Raises ``AttentionBackendError`` (one line: what is missing and how to install it, and what can run
    here) for an unknown backend or one that cannot run on ``device`` in ``dtype``.
    """
    from_env = name is None and bool(os.environ.get(ENV_OVERRIDE))
    name = name or os.environ.get(ENV_OVERRIDE) or "auto"
    if name == "auto":
        return auto_backend(device, dtype, kind, head_dim=head_dim, backends=backends, rules=rules)
    where = f"{ENV_OVERRIDE}={name}" if from_env else repr(name)
    if name not in backends:
        runnable = available_backends(device, dtype, backends=backends)
        raise AttentionBackendError(f"unknown attention backend {where}; runnable here: auto, {', '.join(runnable)}")
    reason = why_unavailable(name, device, dtype, backends=backends)
    if reason is not None:
        runnable = available_backends(device, dtype, backends=backends)
        # "cannot run on cpu" already says what "needs CUDA" would
        detail = "" if reason == "needs CUDA" else f": {reason}"
        raise AttentionBackendError(f"attention backend {where} cannot run on {_device(device)}{detail}; "
                                    f"runnable here: auto, {', '.join(runnable)}")
    return name


def get_backend(name: str) -> AttentionFn:
    """The function of a backend name (no availability check; see ``resolve_backend``)."""
    try:
        return BACKENDS[name].fn
    except KeyError:
        raise AttentionBackendError(
            f"unknown attention backend {name!r}; choose one of: {', '.join(BACKENDS)}") from None


class AttentionOp(nn.Module):
    """The attention kernel call inside a model: a submodule, so that ``runtime.parallel`` can replace it
    with a distributed one (``DistributedAttention``) without editing the model file; ``backend`` names a
    function in this module's table."""

    def __init__(self, backend: str = "sdpa"):
        super().__init__()
        self.backend = backend

    def forward(self, q, k, v, key_mask=None):
        return get_backend(self.backend)(q, k, v, key_mask)
