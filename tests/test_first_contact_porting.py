"""First contact with a hostile checkpoint: a .pth whose pickle would run a command is refused in one line that
names what it tried to run, and never advises loading it unsafely (``weights_only=False``)."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from vidport.porting.cli import main as port_main
from vidport.porting.torchzip import foreign_global
from vidport.runtime.models.wan import family

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "official_weights" / "wan2.1-t2v-tiny"
UNSAFE_ADVICE = ("weights_only=False", "weights_only` set to `False`", "add_safe_globals", "safe_globals")


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def malicious_pth(path: Path, protocol: int = 2) -> Path:
    """A torch.save zip whose data.pkl calls os.system (``posix.system``) when unpickled."""
    ok = path.with_name(path.name + ".ok")
    torch.save({"a": torch.ones(2)}, ok)
    with zipfile.ZipFile(ok) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                data = pickle.dumps({"a": Payload()}, protocol=protocol)
            dst.writestr(info.filename, data)
    ok.unlink()
    return path


def port(*args: object) -> int:
    try:
        port_main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def assert_refusal(err: str, path: Path) -> None:
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and str(path) in err
    assert f"{os.system.__module__}.system" in err and "code execution" in err and "refused" in err
    assert "safetensors" in err and "re-download" in err
    assert not any(a in err for a in UNSAFE_ADVICE), err


def test_diff_keys_refuses_code_in_a_pickle(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = malicious_pth(tmp_path / "evil.pth")
    assert port("diff-keys", evil, "native:wan2.1-t2v-tiny") == 2
    assert_refusal(capsys.readouterr().err.strip(), evil)
    assert not (tmp_path / "pwned").exists()


def test_convert_refuses_a_release_whose_vae_runs_code(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    release = tmp_path / "release"
    shutil.copytree(RELEASE, release)
    vae = release / family.OFFICIAL_FILES["vae"]
    vae.unlink()
    malicious_pth(vae)
    out = tmp_path / "out"
    assert port("convert", release, "--family", "wan2.1-t2v", "--out", out, "--no-progress") == 2
    assert_refusal(capsys.readouterr().err.strip(), vae)
    assert not out.exists() and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_the_refused_global_is_named_without_running_it(tmp_path: Path, monkeypatch, protocol: int):
    """torch names the global only for protocol 2 (what torch.save writes); the table reader names it for the
    others, stopping before anything is called."""
    monkeypatch.chdir(tmp_path)
    evil = malicious_pth(tmp_path / "evil.pth", protocol)
    assert foreign_global(evil) == f"{os.system.__module__}.system"
    assert foreign_global(RELEASE / family.OFFICIAL_FILES["vae"]) is None
    assert not (tmp_path / "pwned").exists()


def test_the_command_prints_one_line_for_a_protocol_4_pickle(tmp_path: Path):
    """The real process: torch's protocol warning does not add lines to the one-line error."""
    evil = malicious_pth(tmp_path / "evil.pth", protocol=4)
    r = subprocess.run([sys.executable, "-m", "vidport.porting.cli", "diff-keys", str(evil), "native:wan2.1-t2v-tiny"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert_refusal(r.stderr.strip(), evil)
    assert not (tmp_path / "pwned").exists()
