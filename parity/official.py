"""Modules from a user's checkout of a family's official code, as parity references.

vidport never copies official code: the user points at a checkout (``port parity --official-root PATH``) and
the family names the modules its reference needs and the shims that let them run here (e.g. an exact SDPA
stand-in for an attention kernel that only runs on CUDA). Each module is loaded from its file under a
private package name, without running the checkout's package ``__init__`` files (they import the whole
application and its optional dependencies), so two checkouts never clash and an installed copy of the
official package is never picked up by mistake.
"""

from __future__ import annotations

import hashlib
import importlib
import subprocess
import sys
import types
import warnings
from pathlib import Path

from vidport.errors import UserError


def checkout_root(root: str | Path, needs: str) -> Path:
    """The checkout folder, or a one-line error naming the file it lacks (``needs``, relative to the root)."""
    path = Path(root).expanduser()
    if not (path / needs).is_file():
        raise UserError(f"{path}: not a checkout of the official code (no {needs}); pass the folder a "
                        "`git clone` of the official repository made (--official-root)")
    return path.resolve()


def load_module(root: str | Path, dotted: str):
    """Import ``dotted`` (e.g. ``pkg.modules.model``) from the file under ``root``; relative imports inside
    it resolve to files of the same checkout. A missing third-party dependency is one line naming it."""
    root = checkout_root(root, str(Path(*dotted.split("."))) + ".py")
    alias = "_vidport_official_" + hashlib.sha1(str(root).encode()).hexdigest()[:10]
    parts = dotted.split(".")
    for i in range(len(parts)):  # the alias and every parent package, as empty packages over the checkout
        name = ".".join([alias, *parts[:i]])
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(root.joinpath(*parts[:i]))]
            package.__package__ = name
            sys.modules[name] = package
    try:
        with warnings.catch_warnings():  # the official code's own deprecation notes (torch.cuda.amp) at import
            warnings.simplefilter("ignore", FutureWarning)
            return importlib.import_module(f"{alias}.{dotted}")
    except ModuleNotFoundError as e:
        if e.name and not e.name.startswith(alias):
            raise UserError(f"the official {dotted} ({root}) imports {e.name!r}, which is not installed here; "
                            f"pip install {e.name.split('.')[0]}") from None
        raise


def describe(root: str | Path) -> str:
    """'PATH @ COMMIT' of a checkout (the commit when it is a git clone and git runs here)."""
    root = Path(root).expanduser().resolve()
    commit = ""
    if (root / ".git").exists():  # its own clone, not a folder inside another repository
        try:
            commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                                    capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return f"{root} @ {commit}" if commit else str(root)
