"""Fixtures for the whole suite (tests/ and parity/)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """The tiny models' ops take microseconds: intra-op threads only add contention, and on a shared
    2-core machine the thread pool spins against other processes (measured: tiny pipeline 0.54 s with
    1 thread, 9.8 s with 2 under load). Restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
