"""The one dtype table (shared base of vidport.porting, .parity and .runtime).

Two spellings meet here: safetensors names (``F32``, ``BF16``: what files and conversion plans carry) and
the short names users type (``fp32``, ``bf16``, ``fp16``). Planning a conversion needs only the sizes, so
importing this module imports no torch; the torch dtypes are built on first use."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# safetensors dtype name -> bytes per element
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
            "F8_E4M3": 1, "F8_E5M2": 1}
FLOATING = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
# short name (and the torch-style long name) -> safetensors name
SHORT = {"fp32": "F32", "float32": "F32", "bf16": "BF16", "bfloat16": "BF16", "fp16": "F16", "float16": "F16"}


@functools.cache
def torch_dtypes() -> dict[str, torch.dtype]:
    """safetensors dtype name -> torch dtype (imports torch on first use)."""
    import torch

    return {
        "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
        "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
        "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    }


@functools.cache
def _dtype_names() -> dict[torch.dtype, str]:
    return {v: k for k, v in torch_dtypes().items()}


def dtype_name(dtype: torch.dtype | str) -> str:
    """A torch dtype's safetensors name (a string is returned as it is)."""
    if isinstance(dtype, str):
        return dtype
    return _dtype_names().get(dtype, str(dtype).replace("torch.", ""))


def torch_dtype(name: str) -> torch.dtype:
    """``fp32``/``bf16``/``fp16`` (or ``float32``..., or a safetensors name) -> the torch dtype; KeyError
    for anything else."""
    return torch_dtypes()[SHORT.get(name, name)]


def short_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bf16" (the name users type)."""
    st = dtype_name(dtype)
    return next((k for k, v in SHORT.items() if v == st and len(k) == 4), st.lower())
