"""Pipeline machinery shared by families: a typed state, generic stages, CFG strategies, validation.

A family's pipeline (e.g. ``runtime/models/wan/pipeline.py``) is a list of stages built from these.
"""

from vidport.runtime.pipeline.guidance import CFG_STRATEGIES, BatchedCFG, CFGStrategy, SerialCFG, get_cfg_strategy
from vidport.runtime.pipeline.stages import Denoise, PrepareLatents, PrepareTimesteps, Stage, run_stages
from vidport.runtime.pipeline.state import GenerationRequest, PipelineState
from vidport.runtime.pipeline.validate import validate_output_path, validate_request

__all__ = [
    "CFG_STRATEGIES", "BatchedCFG", "CFGStrategy", "SerialCFG", "get_cfg_strategy",
    "Denoise", "PrepareLatents", "PrepareTimesteps", "Stage", "run_stages",
    "GenerationRequest", "PipelineState", "validate_output_path", "validate_request",
]
