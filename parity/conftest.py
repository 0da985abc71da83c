"""The parity suite's options and shared fixtures.

    pytest parity/                                      # tiny, CPU, no downloads
    pytest parity/ --device cuda --weights PATH [--official RELEASE]   # real size on a GPU
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


def pytest_addoption(parser):
    group = parser.getgroup("vidport parity")
    for name, kw in [
        ("--device", dict(default="cpu", choices=("cpu", "cuda"), help="device of the parity runs")),
        ("--weights", dict(default=None, help="Diffusers-format repo for real-size parity (the tests of "
                                              "its family run; the others skip)")),
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


def module_family(request):
    """The family a test module is about: its ``FAMILY`` (a registered name or a FamilySpec)."""
    from vidport.families import get_family

    family = getattr(request.module, "FAMILY", None)
    if family is None:
        raise pytest.UsageError(f"{request.module.__name__}: the parity fixtures need the module's FAMILY "
                                "(a registered family name, e.g. FAMILY = get_family(NAME))")
    return get_family(family) if isinstance(family, str) else family


@pytest.fixture(scope="session")
def tiny_repos(tmp_path_factory):
    """``tiny_repos(family)``: the family's embedded tiny release as a Diffusers-format repo (``port convert``),
    converted once per session."""
    from vidport.parity.repos import converted_tiny_repo

    made: dict[str, Path] = {}

    def get(family) -> Path:
        from vidport.families import get_family

        spec = get_family(family) if isinstance(family, str) else family
        if spec.name not in made:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # see one_cpu_thread in the root conftest.py
            try:
                made[spec.name], _ = converted_tiny_repo(tmp_path_factory.mktemp("repo") / spec.tiny_release,
                                                        spec.name)
            finally:
                torch.set_num_threads(threads)
        return made[spec.name]

    return get


@pytest.fixture
def tiny_repo(request, tiny_repos) -> Path:
    """The test module's family (its ``FAMILY``) as a tiny Diffusers-format repo (``tiny_repos``)."""
    return tiny_repos(module_family(request))


@pytest.fixture
def real_repo(request, device) -> Path:
    """--weights PATH (real size) when it is a repo of the test module's family; skips with the reason otherwise."""
    from vidport.families import family_for_pipeline

    family = module_family(request)
    weights = request.config.getoption("--weights")
    if not weights:
        pytest.skip(f"real-size parity needs --weights PATH (a Diffusers-format {family.name} repo) and --device cuda")
    path = Path(weights)
    if not (path / "model_index.json").is_file():
        pytest.skip(f"--weights {path}: no model_index.json (not a Diffusers-format repo)")
    served = family_for_pipeline(json.loads((path / "model_index.json").read_text()).get("_class_name"))
    if served.name != family.name:
        pytest.skip(f"--weights {path} is a {served.name} repo; these tests are {family.name}'s")
    if device != "cuda":
        pytest.skip("real-size parity runs on --device cuda")
    return path
