"""vidport as a user installs it: one `vidport` namespace over the repository's folders, a wheel that
holds every package and the embedded data, and a `port` that works outside the source tree."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("runtime", "porting", "parity")  # installed as vidport.runtime, vidport.porting, vidport.parity


def _python_files():
    for folder in (*TOP_LEVEL, "vidport", "tests", "benchmarks", "scripts"):
        yield from (ROOT / folder).rglob("*.py")
    yield ROOT / "conftest.py"


def test_every_import_goes_through_the_vidport_namespace():
    """`import runtime` works in a clone (the folder is on sys.path) and nowhere else: code must import
    `vidport.runtime`."""
    bad = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in TOP_LEVEL]
    assert not bad, bad


def test_the_package_list_covers_every_package_folder():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    for name, folder in tool["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            assert ".".join((name, *rel.parts)) in listed, f"{init.parent} is not in pyproject's packages"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict]:
    """The wheel `pip wheel .` builds, installed into a folder of its own (no editable finder, no clone)."""
    tmp = tmp_path_factory.mktemp("wheel")
    # built from the tracked files only (as from a fresh clone; setuptools' build/ stays out of the clone)
    src = tmp / "src"
    files = subprocess.run(["git", "ls-files", "-z"], capture_output=True, text=True, cwd=ROOT, check=True)
    for rel in filter(None, files.stdout.split("\0")):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("vidport-*.whl")
    target = tmp / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                        str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    return target, env


def _port(installed, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    target, env = installed
    return subprocess.run([str(target / "bin" / "port"), *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def test_wheel_port_works_outside_the_clone(installed, tmp_path: Path):
    target, env = installed
    r = subprocess.run([sys.executable, "-c", "import vidport, vidport.runtime; print(vidport.runtime.__file__)"],
                       capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.stdout.strip().startswith(str(target)), (r.stdout, r.stderr)  # not the clone's files
    assert not (target / "runtime").exists() and not (target / "porting").exists()  # nothing top-level
    r = _port(installed, "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    commands = [line.split()[0] for line in r.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert {"diff-keys", "convert", "parity", "generate", "ssim-refs", "info"} <= set(commands)
    for command in commands:
        r = _port(installed, command, "--help", cwd=tmp_path)
        assert r.returncode == 0 and "Usage:" in r.stdout, (command, r.stderr)


def test_wheel_carries_the_tiny_release_and_runs_the_main_job(installed, tmp_path: Path):
    target, _ = installed
    release = target / "vidport" / "official_weights" / "wan2.1-t2v-tiny"
    assert (release / "diffusion_pytorch_model.safetensors").is_file()
    assert list((target / "vidport" / "ssim_refs").rglob("*.mp4"))
    r = _port(installed, "diff-keys", str(release), "native:wan2.1-t2v-tiny/transformer", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = _port(installed, "convert", str(release), "--family", "wan2.1-t2v", "--out", "tiny", "--no-progress",
              cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "tiny" / "model_index.json").is_file(), r.stderr
    r = _port(installed, "parity", "wan2.1-t2v", cwd=tmp_path)  # the packaged tiny release by default
    assert r.returncode == 0 and "PASS" in r.stdout, r.stderr[-2000:]
