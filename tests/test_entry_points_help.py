"""Every script entry point parses its arguments: ``--help`` prints usage and exits 0 having written nothing, and
an unknown option is an error (exit 2). The entry points are found by walking the source, so new ones are
covered without editing this file."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "porting", "parity")  # installed as vidport.<name>


def has_main_block(path: Path) -> bool:
    """A top-level ``if __name__ == "__main__":`` (not one inside a string, like the emitted convert script)."""
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = [node.test.left, *node.test.comparators]
            if any(isinstance(n, ast.Name) and n.id == "__name__" for n in names) and \
                    any(isinstance(n, ast.Constant) and n.value == "__main__" for n in names):
                return True
    return False


def entry_points() -> list[list[str]]:
    """The argv (after the interpreter) that runs each entry point: ``-m vidport.<pkg>.<module>`` for the
    packages, the file for the benchmark scripts."""
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if has_main_block(path):
                rel = path.relative_to(ROOT / pkg).with_suffix("")
                found.append(["-m", ".".join(("vidport", pkg, *rel.parts))])
    for path in sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "scripts").rglob("*.py")):
        if has_main_block(path):
            found.append([str(path)])
    return found


ENTRY_POINTS = entry_points()


def test_the_walk_finds_the_entry_points():
    assert ["-m", "vidport.runtime.models.wan.tiny_release"] in ENTRY_POINTS
    assert ["-m", "vidport.porting.cli"] in ENTRY_POINTS
    assert [str(ROOT / "benchmarks" / "bench_parallel.py")] in ENTRY_POINTS


@pytest.mark.parametrize("argv", ENTRY_POINTS, ids=lambda a: a[-1].removeprefix(str(ROOT) + "/"))
def test_help_has_no_side_effects(argv: list[str], tmp_path: Path):
    r = subprocess.run([sys.executable, *argv, "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage" in r.stdout.lower(), r.stdout
    assert list(tmp_path.iterdir()) == []


def test_tiny_release_help_and_unknown_option(tmp_path: Path):
    argv = [sys.executable, "-m", "vidport.runtime.models.wan.tiny_release"]
    r = subprocess.run([*argv, "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("usage:")
    assert "--real-size" in r.stdout and "official_weights/wan2.1-t2v-tiny" in r.stdout
    r = subprocess.run([*argv, "--no-such-option", "out"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "--no-such-option" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_emitted_convert_script_help(tmp_path: Path):
    """The standalone script `port convert --emit-script` writes parses its arguments too."""
    from vidport.porting.cli import main as port_main

    script, out = tmp_path / "convert_wan.py", tmp_path / "out"
    release = ROOT / "official_weights" / "wan2.1-t2v-tiny"
    try:
        port_main(["convert", str(release), "--family", "wan2.1-t2v", "--out", str(out), "--no-progress",
                   "--emit-script", str(script)])
    except SystemExit as e:
        assert not e.code
    work = tmp_path / "work"
    work.mkdir()
    for args, code in ((["--help"], 0), (["--bogus"], 2)):
        r = subprocess.run([sys.executable, "-I", str(script), *args], capture_output=True, text=True, cwd=work)
        assert r.returncode == code, r.stderr
        assert list(work.iterdir()) == [] and not out.exists()
    assert "SOURCE" in r.stderr  # the usage line
