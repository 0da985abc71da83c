"""The README is a map that tells the truth: CI runs exactly its two commands, it stays short, every page it
links exists, and the numbers live in BENCHMARKS.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _code_lines(text: str) -> list[str]:
    return [line.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]


def test_ci_runs_the_readme_commands():
    """.ci/run installs as the README says (torch from PyTorch's CPU index, the tested constraints) and runs
    the README's test command."""
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    install = next(line for line in _code_lines(README) if line.startswith("python3 -m pip install torch"))
    assert install.split(" && bash ")[0] in ci
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in install and "-c constraints.txt" in install
    assert "python3 -m pytest -q" in _code_lines(README) and "python3 -m pytest -q" in ci
    pins = (ROOT / "constraints.txt").read_text()
    for dist in ("torch", "diffusers", "transformers"):
        assert re.search(rf"(?m)^{dist}==\d", pins), dist


def test_readme_is_a_map():
    assert len(README.splitlines()) < 200
    assert "coloured noise" in README  # the tiny model's video is random weights, said up front
    for page in re.findall(r"\]\(([^)#]+)", README):
        assert (ROOT / page).exists(), page
    for f in ("LICENSE", "CHANGELOG.md", "BENCHMARKS.md", "docs/cli.md", "docs/adding-a-family.md"):
        assert (ROOT / f).is_file(), f
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert not re.search(r"\d+(\.\d+)? ?ms\b", README), "speed numbers belong in BENCHMARKS.md"


def test_readme_examples_write_under_out():
    """Examples never leave files in the repository root."""
    for line in _code_lines(README):
        for target in re.findall(r"(?:-o|--out|--write-map|output_path=)\s*\"?([\w./-]+)", line):
            assert target.startswith(("out/", "converted_weights/")), line
