"""Numbers that compare one reference activation with one native activation."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from vidport.parity.tolerances import Tolerance


@dataclass
class Comparison:
    shape_ref: list[int]
    shape_native: list[int]
    max_abs: float = float("nan")
    mean_abs: float = float("nan")
    rel_l2: float = float("nan")
    cosine: float = float("nan")
    ref_absmax: float = float("nan")
    nan_ref: int = 0
    nan_native: int = 0
    inf_ref: int = 0
    inf_native: int = 0
    passed: bool = False
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def compare(ref: torch.Tensor, native: torch.Tensor, tol: Tolerance) -> Comparison:
    """Metrics over the positions finite on both sides (reductions in float64); pass/fail against ``tol``."""
    c = Comparison(list(ref.shape), list(native.shape))
    if ref.shape != native.shape:
        c.reason = f"shape {list(ref.shape)} vs {list(native.shape)}"
        return c
    a, b = ref.detach().float().flatten(), native.detach().float().flatten()
    fa, fb = a.isfinite(), b.isfinite()
    if not (bool(fa.all()) and bool(fb.all())):
        c.nan_ref, c.nan_native = int(a.isnan().sum()), int(b.isnan().sum())
        c.inf_ref, c.inf_native = int(a.isinf().sum()), int(b.isinf().sum())
        both = fa & fb
        a, b = a[both], b[both]
    if a.numel():
        diff = a - b
        c.max_abs = diff.abs().max().item()
        c.mean_abs = diff.abs().sum(dtype=torch.float64).item() / diff.numel()
        c.ref_absmax = a.abs().max().item()
        na = torch.linalg.vector_norm(a, dtype=torch.float64).item()
        nb = torch.linalg.vector_norm(b, dtype=torch.float64).item()
        nd = torch.linalg.vector_norm(diff, dtype=torch.float64).item()
        c.rel_l2 = nd / na if na > 0 else (0.0 if nb == 0 else float("inf"))
        if na > 0 and nb > 0:
            c.cosine = torch.dot(a.double(), b.double()).item() / (na * nb)
        else:
            c.cosine = 1.0 if na == nb else 0.0
    else:
        c.max_abs = c.mean_abs = c.rel_l2 = c.ref_absmax = 0.0
        c.cosine = 1.0
    reasons = []
    if (c.nan_ref, c.inf_ref) != (c.nan_native, c.inf_native):
        reasons.append(f"NaN/Inf {c.nan_ref}/{c.inf_ref} vs {c.nan_native}/{c.inf_native}")
    if not c.max_abs <= tol.atol + tol.rtol * c.ref_absmax:
        reasons.append(f"max_abs {c.max_abs:.3g} > {tol.atol:g} + {tol.rtol:g}*{c.ref_absmax:.3g}")
    if not c.rel_l2 <= tol.rel_l2:
        reasons.append(f"rel_l2 {c.rel_l2:.3g} > {tol.rel_l2:g}")
    if not c.cosine >= tol.cosine:
        reasons.append(f"cosine {c.cosine:.6f} < {tol.cosine:g}")
    c.passed = not reasons
    c.reason = "; ".join(reasons)
    return c
