"""The parity suite's options and shared fixtures.

    pytest parity/                                      # tiny, CPU, no downloads
    pytest parity/ --device cuda --weights PATH [--official RELEASE]   # real size on a GPU
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def pytest_addoption(parser):
    group = parser.getgroup("vidport parity")
    for name, kw in [
        ("--device", dict(default="cpu", choices=("cpu", "cuda"), help="device of the parity runs")),
        ("--weights", dict(default=None, help="Diffusers-format Wan repo for real-size parity")),
        ("--official", dict(default=None, help="official release folder (VAE reference source)")),
    ]:
        try:
            group.addoption(name, **kw)
        except ValueError:  # another conftest already declared it
            pass


@pytest.fixture(scope="session")
def device(request) -> str:
    dev = request.config.getoption("--device")
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda: no CUDA device on this machine")
    return dev


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> Path:
    """The embedded tiny release as a Diffusers-format repo (port convert, or the stand-in)."""
    from vidport.parity.repos import converted_tiny_repo

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see one_cpu_thread in the root conftest.py
    try:
        path, _ = converted_tiny_repo(tmp_path_factory.mktemp("repo") / "wan2.1-t2v-tiny", "wan2.1-t2v")
    finally:
        torch.set_num_threads(threads)
    return path


@pytest.fixture(scope="session")
def real_repo(request, device) -> Path:
    """--weights PATH (real size); skips with the reason when absent."""
    weights = request.config.getoption("--weights")
    if not weights:
        pytest.skip("real-size parity needs --weights PATH (a Diffusers-format Wan repo) and --device cuda")
    path = Path(weights)
    if not (path / "model_index.json").is_file():
        pytest.skip(f"--weights {path}: no model_index.json (not a Diffusers-format repo)")
    if device != "cuda":
        pytest.skip("real-size parity runs on --device cuda")
    return path
