"""Run a reference and a native model on the same inputs and compare aligned activations.

    report = run_parity(reference, lambda: reference(x, t, ctx_padded), native, lambda: native(x, t, ctx),
                        name_map=diffusers_to_native, dtype="fp32")
    print(report.table()); report.first_failure  # -> the first divergent module, or None

The run is controlled: same seed before each side, deterministic algorithms, and the SDPA math kernel
forced on both sides (``force_math_attention``); call ``controlled()`` yourself to build inputs under
the same settings.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from vidport.parity.align import Pair, align, combine
from vidport.parity.capture import Recorder, Trace, first_tensor
from vidport.parity.metrics import compare
from vidport.parity.report import Report, Row
from vidport.parity.tolerances import dtype_key, tolerance
from vidport.porting.namemap import NameMap, Rule

IDENTITY_MAP = NameMap.loads("rename ^(.*)$ -> \\1", origin="identity")


@dataclass
class Setup:
    """What one parity comparison runs, as a family's parity setup returns it (``FamilySpec.parity_setups``):
    the two modules to hook, the two callables that run them on identical inputs, the map from the reference's
    parameter names to the native's (which aligns their modules) and the two sides' descriptions."""

    component: str
    reference: nn.Module
    run_reference: Any
    native: nn.Module
    run_native: Any
    name_map: NameMap
    reference_name: str
    native_name: str


def prefixed(maps: dict[str, NameMap]) -> NameMap:
    """One map over a ModuleDict of components: each component's rules under its prefix."""
    rules = []
    for prefix, m in maps.items():
        for r in m.rules:
            body = r.pattern[1:] if r.pattern.startswith("^") else r.pattern
            reps = tuple(f"{prefix}.{rep}" for rep in r.replacements)
            rules.append(Rule(r.kind, f"^{prefix}\\.{body}", reps, parts=r.parts, dim=r.dim, shape=r.shape,
                              from_shape=r.from_shape, sizes=r.sizes, perm=r.perm))
    return NameMap(rules, source="components", target="components")


def library_versions() -> tuple[str, str]:
    """(diffusers, transformers) versions, for a setup's reference name."""
    import diffusers
    import transformers

    return diffusers.__version__, transformers.__version__


def component_folder(repo: Path, component: str, what: str) -> Path:
    """``repo/component`` of a Diffusers-format repo, or a one-line error naming the repo and what it should be."""
    folder = Path(repo) / component
    if not (folder / "config.json").is_file():
        from vidport.errors import UserError

        raise UserError(f"{repo}: no {component}/config.json; pass a Diffusers-format {what} repo "
                        "(e.g. written by `port convert`)")
    return folder


def pipelines_for_parity(repo: Path, pipeline_cls, *, dtype: torch.dtype, device, cfg, frames: int | None,
                         height: int | None, width: int | None, steps: int | None):
    """Both sides of a whole-pipeline parity run on one repo: the runtime's ``VideoGenerator`` (exact attention,
    diffusers' sampler grid and noise, the fast precision: what diffusers' pipeline does) and the diffusers pipeline
    ``pipeline_cls`` (its VAE in fp32, as the runtime decodes), plus the request's sampling keyword arguments (the
    given sizes and steps, else the runtime's defaults) and those defaults. -> (generator, pipe, kwargs, defaults)"""
    from vidport.runtime import VideoGenerator
    from vidport.runtime.loading import quiet_library_loading

    gen = VideoGenerator.from_pretrained(repo, dtype="fp32" if dtype == torch.float32 else "bf16", device=device,
                                         attention_backend="sdpa-math", cfg=cfg, sampler_grid="diffusers",
                                         noise="diffusers", precision="fast")
    with quiet_library_loading():
        pipe = pipeline_cls.from_pretrained(repo, dtype=dtype)
        pipe.vae.to(torch.float32)  # the runtime decodes in fp32
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    d = dict(gen.defaults)
    kw = dict(num_frames=frames or d["num_frames"], height=height or d["height"], width=width or d["width"],
              num_inference_steps=steps or d["num_inference_steps"], guidance_scale=d["guidance_scale"])
    return gen, pipe, kw, d


def force_math_attention(model: nn.Module) -> None:
    """Select the exact SDPA math kernel in a model and in every model it contains (a ModuleDict of
    pipeline components): vidport models name their backend (``set_attention_backend("sdpa-math")``),
    diffusers models take ``_native_math``; everything else (transformers) runs under the ``sdpa_kernel``
    context of ``controlled``."""
    for m in model.modules():
        if type(m).__module__.startswith("vidport.") and callable(getattr(m, "set_attention_backend", None)):
            m.set_attention_backend("sdpa-math")
        elif type(m).__module__.startswith("diffusers") and callable(getattr(m, "set_attention_backend", None)) \
                and hasattr(m, "config"):
            with _quiet_diffusers():
                m.set_attention_backend("_native_math")


@contextlib.contextmanager
def _quiet_diffusers():
    import logging

    log = logging.getLogger("diffusers")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def controlled(seed: int = 0, deterministic: bool = True) -> Iterator[None]:
    """Seed, deterministic algorithms and the SDPA math kernel, restored afterwards."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read by cuBLAS when deterministic
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_bench = torch.backends.cudnn.benchmark
    prev_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.manual_seed(seed)
    try:
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        with sdpa_kernel([SDPBackend.MATH]), torch.no_grad():
            yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.backends.cudnn.benchmark = prev_bench
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev_tf32


def record(model: nn.Module, run: Callable[[], object], *, seed: int,
           store_device: str | None = None) -> tuple[Trace, object]:
    """Run once under ``controlled(seed)`` with every module hooked: (trace, what ``run`` returned)."""
    with controlled(seed), Recorder(model, store_device=store_device) as rec:
        result = run()
    return rec.trace, result


OUTPUT = "<output>"


def _compare_results(ref_result, nat_result, order: int, tol) -> Row:
    """The values the two runs returned (final latents, embeddings...), compared like a module."""
    row = Row(pair=Pair((OUTPUT,), OUTPUT, how="result"), calls=1, order=order)
    ref_t, nat_t = first_tensor(ref_result), first_tensor(nat_result)
    if ref_t is None or nat_t is None:
        row.status, row.note, row.calls = "not run", "a run returned no tensor", 0
        return row
    cmp = compare(ref_t, nat_t, tol)
    row.comparisons.append(cmp)
    if not cmp.passed:
        row.status, row.fail_order, row.fail_call = "fail", order, 0
    return row


def run_parity(reference: nn.Module, run_reference: Callable[[], object], native: nn.Module,
               run_native: Callable[[], object], *, name_map: NameMap | None = None,
               dtype: torch.dtype | str = "fp32", seed: int = 0, store_device: str | None = None,
               reference_name: str = "reference", native_name: str = "native",
               save_failing: str | os.PathLike | None = None) -> Report:
    """Run both sides once each under ``controlled(seed)`` and compare every aligned module pair.

    ``name_map`` maps the reference's parameter names to the native's (identity when omitted, for two
    instances of the same class). ``save_failing``: a folder where both sides' activations of the first
    failing module are written (``first_failure.pt``).
    """
    name_map = name_map or IDENTITY_MAP
    key = dtype_key(dtype)
    tol = tolerance(key)
    for m in (reference, native):
        force_math_attention(m)
    ref_trace, ref_result = record(reference, run_reference, seed=seed, store_device=store_device)
    nat_trace, nat_result = record(native, run_native, seed=seed, store_device=store_device)

    pairs = align(reference, native, name_map, ref_trace, nat_trace)
    rows = [_compare_pair(p, ref_trace, nat_trace, tol) for p in pairs]
    # execution order: when the native module first finished (unexecuted pairs last)
    rows.sort(key=lambda r: (r.order < 0, r.order))
    rows.append(_compare_results(ref_result, nat_result, len(nat_trace.calls), tol))
    report = Report(rows=rows, dtype=key, tolerance=tol, reference=reference_name, native=native_name,
                    seed=seed)
    if save_failing is not None and report.first_failure is not None:
        report.saved = str(_save(report.first_failure, ref_trace, nat_trace, save_failing))
    return report


def _compare_pair(pair: Pair, ref_trace: Trace, nat_trace: Trace, tol) -> Row:
    nat_calls = nat_trace.by_path.get(pair.native, [])
    ref_calls = [ref_trace.by_path.get(r, []) for r in pair.ref]
    row = Row(pair=pair, calls=len(nat_calls))
    if not nat_calls or not all(ref_calls):
        row.status = "not run"
        row.note = ("native module never called as a module (used functionally)" if not nat_calls
                    else "reference module never called")
        row.order = nat_calls[0].order if nat_calls else -1
        return row
    n_ref = min(len(c) for c in ref_calls)
    # list of samples vs batch: k reference calls (e.g. cond, uncond) make one batched native call
    k = n_ref // len(nat_calls) if n_ref % len(nat_calls) == 0 else 0
    if k == 0:
        row.status = "fail"
        row.note = f"called {n_ref} times in the reference, {len(nat_calls)} in the native model"
        row.order = row.fail_order = nat_calls[0].order
        return row
    if k > 1:
        row.note = f"{k} reference calls batched into one native call"

    def joined(i: int, attr: str):
        parts = [[getattr(c[i * k + j], attr) for c in ref_calls] for j in range(k)]
        if any(t is None for p in parts for t in p):
            return None
        per_call = [combine(p, pair.adapter) if attr == "output" else p[0] for p in parts]
        return per_call[0] if k == 1 else torch.cat(per_call, dim=0)

    for i, nat in enumerate(nat_calls):
        ref_out = joined(i, "output")
        if nat.output is None or ref_out is None:
            row.comparisons.append(None)
            continue
        cmp = compare(ref_out, nat.output, tol)
        row.comparisons.append(cmp)
        if not cmp.passed and row.fail_order is None:
            row.fail_order, row.fail_call = nat.order, i
            ref_in = joined(i, "input")
            if ref_in is not None and nat.input is not None:
                row.input_cmp = compare(ref_in, nat.input, tol)
    row.order = nat_calls[0].order
    row.status = "fail" if row.fail_order is not None else "pass"
    return row


def _save(row: Row, ref_trace: Trace, nat_trace: Trace, folder) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pair = row.pair
    data = {
        "native_module": pair.native, "reference_modules": list(pair.ref), "adapter": pair.adapter,
        "native": [c.output for c in nat_trace.by_path.get(pair.native, [])],
        "native_inputs": [c.input for c in nat_trace.by_path.get(pair.native, [])],
        "reference": {r: [c.output for c in ref_trace.by_path.get(r, [])] for r in pair.ref},
        "reference_inputs": {r: [c.input for c in ref_trace.by_path.get(r, [])] for r in pair.ref},
    }
    path = folder / "first_failure.pt"
    torch.save(data, path)
    return path
