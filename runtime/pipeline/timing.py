"""Wall-clock timing of stages and of denoising steps without host syncs inside the loop.

On CUDA, per-step times come from CUDA events read once after the loop; a stage boundary
synchronizes once (so a stage's time is the GPU work it launched, not just the launch).
"""

from __future__ import annotations

import time

import torch


def now(device: torch.device) -> float:
    """Seconds, after the device's queued work has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class StepClock:
    """``start()``, then ``lap()`` after each step; ``seconds()`` returns the per-step durations."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        self.marks = [self._mark()]

    def lap(self) -> None:
        self.marks.append(self._mark())

    def seconds(self) -> list[float]:
        if len(self.marks) < 2:
            return []
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) / 1000.0 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]
