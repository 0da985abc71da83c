"""Strict loading of weights into native modules through a NameMap.

Every target parameter must be produced exactly once with its exact shape, every source tensor must be
used or declared dropped by the map; otherwise loading fails listing *all* missing, unexpected and
shape-mismatched keys. Tensors are read one at a time from the source (safetensors are mmap'd).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from vidport.porting.namemap import NameMap
from vidport.porting.sources import StateDictSource, open_source

from vidport.errors import UserError


class StrictLoadError(UserError):
    """Raised with the full list of problems (missing / unexpected / shape mismatch)."""

    def __init__(self, what: str, missing, unexpected, mismatched, unmatched):
        self.missing, self.unexpected, self.mismatched, self.unmatched = missing, unexpected, mismatched, unmatched
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected),
                             ("shape mismatch", mismatched), ("matched by no map rule", unmatched)):
            if items:
                parts.append(f"{len(items)} {label}: " + ", ".join(items))
        super().__init__(f"strict load of {what} failed: " + "; ".join(parts))


def load_into(module: nn.Module, source: StateDictSource, name_map: NameMap | None = None, *,
              device: torch.device | str | None = None, dtype_fn=None) -> set[str]:
    """Load ``source`` into ``module`` (which may live on the meta device) through ``name_map``.

    ``dtype_fn(name, tensor) -> dtype`` picks each parameter's dtype (default: keep the module's).
    Returns the set of loaded target names. Raises StrictLoadError listing every problem.
    """
    name_map = name_map or NameMap.loads("rename ^(.*)$ -> \\1")
    plan = name_map.plan(source.keys())
    target_sd = module.state_dict(keep_vars=True)
    source_shapes = source.shapes()

    produced = plan.targets
    missing = [k for k in target_sd if k not in produced]
    unexpected = [k for k in produced if k not in target_sd]
    mismatched = []
    for k, op in produced.items():
        if k in target_sd:
            got = tuple(op.target_shape(source_shapes))
            want = tuple(target_sd[k].shape)
            if got != want:
                mismatched.append(f"{k} (source {list(got)} vs model {list(want)})")
    if missing or unexpected or mismatched or plan.unmatched:
        raise StrictLoadError(source.description, missing, unexpected, mismatched, plan.unmatched)

    loaded: set[str] = set()
    for op in plan.ops:
        tensor = op.compute(source.get)
        current = target_sd[op.target]
        dtype = dtype_fn(op.target, tensor) if dtype_fn else (
            current.dtype if current.dtype.is_floating_point else tensor.dtype)
        dev = device if device is not None else (current.device if not current.is_meta else "cpu")
        value = tensor.to(device=dev, dtype=dtype)
        if value._base is not None:  # a view of a staged buffer or a split: own the memory
            value = value.clone()
        _set_tensor(module, op.target, value)
        loaded.add(op.target)
    return loaded


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    *path, leaf = name.split(".")
    owner = module.get_submodule(".".join(path)) if path else module
    old = getattr(owner, leaf)
    if isinstance(old, nn.Parameter):
        setattr(owner, leaf, nn.Parameter(value, requires_grad=False))
    else:
        owner._buffers[leaf] = value  # registered buffer


def read_diffusers_config(folder: Path) -> dict:
    cfg_path = Path(folder) / "config.json"
    try:
        return json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise UserError(f"{folder}: no config.json; expected a Diffusers-format component folder") from None
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{cfg_path}: cannot read ({e})") from None


def keep_in_fp32_modules(config: dict) -> tuple[str, ...]:
    """The ``_keep_in_fp32_modules`` the Diffusers class of a component config declares (the one rule
    ``port convert`` applies too, ``porting.plan.keeps_fp32``)."""
    import diffusers

    cls = getattr(diffusers, str(config.get("_class_name")), None)
    return tuple(getattr(cls, "_keep_in_fp32_modules", None) or ())


def fp32_targets(name_map: NameMap, source_keys, keep: tuple[str, ...]) -> set[str]:
    """Native names whose tensors stay fp32: those made only from Diffusers tensors of keep-in-fp32 modules
    (``porting.plan.keeps_fp32``, diffusers' rule: a module name is one dotted part of the key)."""
    from vidport.porting.plan import keeps_fp32

    return {op.target for op in name_map.plan(list(source_keys)).ops if all(keeps_fp32(s, keep) for s in op.sources)}


def keeps_native_fp32(name: str, modules: tuple[str, ...]) -> bool:
    """A native tensor under one of ``modules`` (dotted module paths, e.g. ``head.proj``)."""
    return any(name == m or name.startswith(m + ".") for m in modules)


def cast_native(model: nn.Module, family, dtype: torch.dtype, diffusers_config: dict,
                keep_fp32: tuple[str, ...] = ()) -> nn.Module:
    """Cast a native DiT (built in fp32, e.g. with seeded random weights in a benchmark) to ``dtype`` the
    way ``load_transformer`` loads one: the tensors that map back (the family's Diffusers->native map,
    reversed) onto modules the Diffusers class keeps in fp32 stay fp32, and so do the native modules in
    ``keep_fp32``."""
    from vidport.families import get_family

    fam = get_family(family) if isinstance(family, str) else family
    back = NameMap.load(fam.diffusers_to_native).reverse().plan(list(model.state_dict()))
    keep = keep_in_fp32_modules(diffusers_config)
    # a native tensor stays fp32 when every Diffusers tensor it is made of does (the forward rule)
    made_of: dict[str, list[str]] = {}
    for op in back.ops:
        for s in op.sources:
            made_of.setdefault(s, []).append(op.target)
    from vidport.porting.plan import keeps_fp32

    fp32 = {n for n, targets in made_of.items() if all(keeps_fp32(t, keep) for t in targets)}
    fp32 |= {n for n, _ in model.named_parameters() if keeps_native_fp32(n, keep_fp32)}
    for name, p in model.named_parameters():
        p.data = p.data.to(torch.float32 if name in fp32 else dtype)
    return model


def load_transformer(folder: str | Path, family, *, dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu", keep_fp32: tuple[str, ...] = ()) -> nn.Module:
    """A Diffusers-format ``transformer/`` folder -> the family's native DiT, strictly, tensors streamed to
    ``device`` through the family's Diffusers->native map. Under a low-precision ``dtype`` the tensors of the
    modules the Diffusers class keeps in fp32 stay fp32, judged on their Diffusers names; so do the tensors
    of the native modules in ``keep_fp32`` (a precision recipe's own fp32 modules, named by the model)."""
    from vidport.families import get_family

    fam = get_family(family) if isinstance(family, str) else family
    folder = Path(folder)
    cfg = read_diffusers_config(folder)
    try:
        with torch.device("meta"):
            model = fam.load(fam.native_transformer)(cfg)
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(f"{folder / 'config.json'}: not a {fam.name} transformer config ({e})") from None
    source = open_source(str(folder))
    source.stage_on(device)  # on a GPU: the file's bytes in large pinned chunks, then views (fast)
    name_map = NameMap.load(fam.diffusers_to_native)
    fp32 = fp32_targets(name_map, source.keys(), keep_in_fp32_modules(cfg))

    def pick(name, tensor):
        return torch.float32 if name in fp32 or keeps_native_fp32(name, keep_fp32) else dtype

    load_into(model, source, name_map, device=device, dtype_fn=pick)
    return model.eval().requires_grad_(False)


# --- loading library models strictly and quietly (every family's pipeline) -----------------------------
@contextlib.contextmanager
def quiet_library_loading() -> Iterator[None]:
    """No 'Loading weights' bars or info logs from transformers/diffusers while they load our components
    (an API caller would see them on stderr; our loads are strict, so their notes add nothing). The
    caller's bar and verbosity settings are restored afterwards."""
    import diffusers.utils.logging as diffusers_logging
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as transformers_logging

    libraries = (transformers_logging, diffusers_logging)
    saved = [(lib.is_progress_bar_enabled(), lib.get_verbosity()) for lib in libraries]
    hub_bars_off = hub_utils.are_progress_bars_disabled()  # transformers' switch flips the hub's too
    for lib in libraries:
        lib.disable_progress_bar()
        lib.set_verbosity_error()
    try:
        yield
    finally:
        for lib, (bar, verbosity) in zip(libraries, saved):
            (lib.enable_progress_bar if bar else lib.disable_progress_bar)()
            lib.set_verbosity(verbosity)
        (hub_utils.disable_progress_bars if hub_bars_off else hub_utils.enable_progress_bars)()


def load_or_fail(fn, what: Path):
    """``fn()``, with a library's OSError/ValueError as one UserError line naming ``what``."""
    try:
        return fn()
    except (OSError, ValueError) as e:
        raise UserError(f"{what}: cannot load ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def strict_from_pretrained(cls, folder: Path, **kwargs):
    """``cls.from_pretrained`` that fails on any missing, unexpected or mismatched tensor."""
    model, info = load_or_fail(lambda: cls.from_pretrained(folder, output_loading_info=True, **kwargs), folder)
    problems = {k: sorted(v) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")
                if (v := info.get(k))}
    if problems:
        raise UserError(f"{folder}: strict load failed: " + "; ".join(
            f"{len(v)} {k.replace('_', ' ')}: {', '.join(map(str, v[:20]))}" for k, v in problems.items()))
    return model


def load_text_and_vae(folder: Path, *, tokenizer_class, text_encoder_class, vae_class, dtype: torch.dtype,
                      device: torch.device, text_encoder: bool = True):
    """A Diffusers pipeline repo's ``tokenizer/``, ``text_encoder/`` (strictly, in ``dtype``, eval;
    None when ``text_encoder`` is False: a multi-GPU rank that is sent rank 0's encoding) and ``vae/`` (strictly,
    in fp32, eval: diffusers' and the official recommendation, bf16 decoding bands colours), on ``device``."""
    folder = Path(folder)
    with quiet_library_loading():
        tokenizer = load_or_fail(lambda: tokenizer_class.from_pretrained(folder / "tokenizer"), folder / "tokenizer")
        encoder = strict_from_pretrained(text_encoder_class, folder / "text_encoder", dtype=dtype).to(device).eval() \
            if text_encoder else None
        vae = strict_from_pretrained(vae_class, folder / "vae")
    vae = (vae if vae.dtype == torch.float32 else vae.float()).to(device)
    return tokenizer, encoder, vae.eval()
