"""The fused Triton kernels against their PyTorch reference paths (``benchmarks/check_kernels.py``), each alone and as
both tiny DiTs call them (the whole forward, fused vs reference path): on CUDA when this machine has a GPU, else under
Triton's CPU interpreter (fp16, a few tokens: the kernels match exactly, the forwards within their rounding). Skipped
where Triton is not installed: PyTorch's CUDA builds ship it, its CPU builds do not (``pip install triton`` then
runs it)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="Triton is not installed (PyTorch's CUDA builds ship it; on a CPU build `pip install "
                           "triton` checks the kernels under its interpreter)")
def test_fused_kernels_match_their_reference_paths():
    interpret = not torch.cuda.is_available()
    env = dict(os.environ, TRITON_INTERPRET="1") if interpret else dict(os.environ)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "check_kernels.py")] + (["--interpret"] if interpret else [])
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-4000:]
    assert report.count(" ok\n") >= 32, report[-4000:]
    assert "ltx_dit[tiny" in report and "wan_dit[tiny" in report
