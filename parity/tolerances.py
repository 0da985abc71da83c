"""The one per-dtype tolerance table of the parity harness.

A pair of activations passes when ``max_abs <= atol + rtol * max|reference|`` and ``rel_l2 <= rel_l2``
and ``cosine >= cosine``. fp32 numbers are set well above the measured noise of a correct port (tiny Wan
DiT: worst rel_l2 3e-6, see README "Parity") and far below what one wrong tensor does (>= 1e-2);
bf16/fp16 numbers follow the dtypes' resolution (8 and 11 mantissa bits) with room for the error a
correct port accumulates through a block.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    rel_l2: float
    cosine: float

    def as_dict(self) -> dict:
        return asdict(self)


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-5, rtol=1e-4, rel_l2=1e-4, cosine=0.99999),
    "bf16": Tolerance(atol=2e-2, rtol=5e-2, rel_l2=3e-2, cosine=0.999),
    "fp16": Tolerance(atol=2e-3, rtol=1e-2, rel_l2=5e-3, cosine=0.9999),
}

def dtype_key(dtype: torch.dtype | str) -> str:
    """torch dtype or name -> key of TOLERANCES."""
    if isinstance(dtype, str):
        if dtype in TOLERANCES:
            return dtype
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(TOLERANCES)}")
    from vidport.dtypes import short_name

    if short_name(dtype) in TOLERANCES:
        return short_name(dtype)
    raise ValueError(f"no tolerance for dtype {dtype}; choose one of {', '.join(TOLERANCES)}")


def tolerance(dtype: torch.dtype | str) -> Tolerance:
    return TOLERANCES[dtype_key(dtype)]
