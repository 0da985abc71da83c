"""Pipeline machinery shared by families: a typed state, generic stages, CFG strategies, validation.

A family's pipeline (e.g. ``runtime/models/wan/pipeline.py``) is a list of stages built from these.
Names are imported on first use, so validating a request (``validate``) does not import torch.
"""

from __future__ import annotations

import importlib

_WHERE = {
    **dict.fromkeys(("CFG_STRATEGIES", "BatchedCFG", "CFGStrategy", "SerialCFG", "get_cfg_strategy",
                     "without_padding"), "guidance"),
    **dict.fromkeys(("Denoise", "PrepareLatents", "PrepareTimesteps", "Stage", "run_stages", "uint8_frames"),
                     "stages"),
    **dict.fromkeys(("Conditioning", "GenerationRequest", "PipelineState", "drop_common_padding"), "state"),
    **dict.fromkeys(("validate_output_path", "validate_request"), "validate"),
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
