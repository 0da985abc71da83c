"""The tiny release end to end on a GPU: convert, then generate in bf16 on CUDA (Triton kernels at tiny
widths: head_dim 16, 64 channels) and in fp32 on the CPU, and compare the frames.

    python benchmarks/check_tiny_cuda.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidport.runtime.generator import VideoGenerator  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "wan2.1-t2v-tiny"
        subprocess.run([sys.executable, "-m", "vidport.porting.cli", "convert",
                        str(ROOT / "official_weights/wan2.1-t2v-tiny"), "--family", "wan2.1-t2v", "--out", str(repo)],
                       check=True, cwd=ROOT)
        runs = {}
        for device, dtype, backend in (("cpu", "fp32", "sdpa-math"), ("cuda", "fp32", "sdpa-math"),
                                       ("cuda", "bf16", None)):
            gen = VideoGenerator.from_pretrained(repo, device=device, dtype=dtype, attention_backend=backend)
            frames = gen.generate_video("a cat walks on the grass", seed=0, num_frames=9, height=48, width=64,
                                        num_inference_steps=4)
            runs[(device, dtype)] = frames
            print(f"{device} {dtype}: frames {frames.shape}, timings {gen.last_report.timings}", flush=True)
        ref = runs[("cpu", "fp32")].astype(np.int16)
        for key, frames in runs.items():
            diff = np.abs(frames.astype(np.int16) - ref)
            print(f"{key} vs cpu fp32: mean |diff| {diff.mean():.3f}/255, max {diff.max()}, "
                  f"{100 * (diff <= 1).mean():.2f}% within 1/255")
        print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    main()
