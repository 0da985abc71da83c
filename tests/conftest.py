"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_RELEASE = Path(__file__).resolve().parents[1] / "official_weights" / "wan2.1-t2v-tiny"
LTX_TINY_RELEASE = Path(__file__).resolve().parents[1] / "official_weights" / "ltx-video-tiny"


def _convert(release: Path, family: str, out: Path) -> Path:
    from vidport.porting.cli import main

    try:
        main(["convert", str(release), "--family", family, "--out", str(out), "--no-progress"])
    except SystemExit as e:
        if e.code:
            pytest.fail(f"port convert of {release} failed (exit {e.code})")
    return out


@pytest.fixture(scope="session")
def converted_tiny_release(tmp_path_factory) -> Path:
    """The embedded tiny Wan release, converted by `port convert` into a Diffusers-format repo (once per session).
    Read-only for tests: copy it before changing anything."""
    return _convert(TINY_RELEASE, "wan2.1-t2v", tmp_path_factory.mktemp("converted") / "wan2.1-t2v-tiny")


@pytest.fixture(scope="session")
def converted_ltx_release(tmp_path_factory) -> Path:
    """The embedded tiny LTX-Video release, converted (once per session). Read-only for tests."""
    return _convert(LTX_TINY_RELEASE, "ltx-video", tmp_path_factory.mktemp("converted") / "ltx-video-tiny")


def _pool(size: int):
    from vidport.runtime.parallel import WorkerPool

    with WorkerPool(size, device="cpu") as pool:
        yield pool


# gloo worker pools of 2, 3 and 4 CPU ranks, one per test module (spawning ranks costs seconds)
@pytest.fixture(scope="module")
def pool2():
    yield from _pool(2)


@pytest.fixture(scope="module")
def pool3():
    yield from _pool(3)


@pytest.fixture(scope="module")
def pool4():
    yield from _pool(4)
