"""The Diffusers-format tiny repo the parity suite runs on: ``port convert`` of a family's embedded
official tiny release (``official_weights/<family tiny release>``, also packaged in the wheel)."""

from __future__ import annotations

from pathlib import Path

from vidport.errors import UserError
from vidport.families import FamilySpec, get_family

ROOT = Path(__file__).resolve().parent.parent


def tiny_release(family: str | FamilySpec) -> Path:
    """The family's embedded official tiny release folder."""
    fam = get_family(family) if isinstance(family, str) else family
    return ROOT / "official_weights" / fam.tiny_release


def check_repo(repo: Path) -> None:
    """``--weights``: a Diffusers-format repo with sound weight files, or a one-line error (exit 2)."""
    from vidport.porting.sources import check_diffusers_repo

    check_diffusers_repo(repo)


def converted_tiny_repo(out: Path, family: str) -> tuple[Path, str]:
    """The family's tiny release converted by `port convert` into ``out``: (path, how it was made)."""
    from click.testing import CliRunner
    from vidport.porting.cli import cli

    release = tiny_release(family)
    out = Path(out)
    args = ["convert", str(release), "--family", family, "--out", str(out), "--no-progress"]
    result = CliRunner().invoke(cli, args)
    if result.exit_code != 0:
        raise UserError(f"port convert {release} failed: {result.output.strip().splitlines()[-1:]}"
                        f"{result.exception or ''}")
    return out, "port convert"
