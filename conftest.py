"""Fixtures for the whole suite (tests/ and parity/)."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """vidport's cache (``port convert``'s memo of the target side) in a folder of this run, for tests and
    the commands they start: never the user's, and cold at the start of each run."""
    os.environ["VIDPORT_CACHE_DIR"] = str(tmp_path_factory.mktemp("vidport-cache"))
    yield
    os.environ.pop("VIDPORT_CACHE_DIR", None)


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """The tiny models' ops take microseconds: intra-op threads only add contention, and on a shared
    2-core machine the thread pool spins against other processes (measured: tiny pipeline 0.54 s with
    1 thread, 9.8 s with 2 under load). Restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
