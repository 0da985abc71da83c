"""A memo of a conversion's target side (state-dict shapes, keep-in-fp32 lists, config files): building it
imports diffusers and transformers, several seconds of CPU."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from vidport.porting.provenance import installed_version

# ----------------------------------------------------------------------------------------------
# A memo of the target side: building it imports diffusers and transformers (several seconds of CPU)
# ----------------------------------------------------------------------------------------------
CACHE_ENV = "VIDPORT_CACHE_DIR"


def cache_dir() -> Path | None:
    """``$VIDPORT_CACHE_DIR`` (empty: no cache), else ``$XDG_CACHE_HOME/vidport``, else ``~/.cache/vidport``."""
    if CACHE_ENV in os.environ:
        return Path(os.environ[CACHE_ENV]) if os.environ[CACHE_ENV] else None
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vidport"


class TargetCache:
    """The strict targets (state-dict shapes, keep-in-fp32 lists) and config files of a conversion, stored
    as JSON under a key made of everything they are computed from: the target configs, the versions of
    diffusers, transformers and torch, and the code that builds them (this file and the family's). A hit
    gives the same bytes without importing diffusers or transformers; any other input is a miss. The file
    is only an optimisation: an unreadable or foreign one is ignored and rewritten."""

    def __init__(self, key: dict, code: list[Path]):
        material = {"key": key, "versions": {d: installed_version(d) for d in ("diffusers", "transformers", "torch")},
                    "code": [hashlib.sha256(p.read_bytes()).hexdigest() for p in code]}
        self.digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
        root = cache_dir()
        self.path = root / "convert-targets" / f"{self.digest[:32]}.json" if root is not None else None
        self.entry: dict = {}
        self._targets: dict | None = None
        if self.path is not None:
            try:
                entry = json.loads(self.path.read_text())
                if entry["digest"] == self.digest:
                    self._targets = {comp: ({k: tuple(v) for k, v in shapes.items()}, str(stem), tuple(keep))
                                     for comp, (shapes, stem, keep) in entry["targets"].items()}
                    if all(isinstance(t, str) for files in entry["files"].values() for t in files.values()):
                        self.entry = entry
                    else:
                        self._targets = None
            except (OSError, ValueError, TypeError, KeyError, AttributeError):  # damaged: ignored, rewritten
                self._targets = None

    def targets(self) -> dict | None:
        return self._targets

    def files(self, t5_dtype: str) -> dict[str, str] | None:
        return self.entry.get("files", {}).get(t5_dtype)

    def store(self, targets: dict, t5_dtype: str, files: dict[str, str]) -> None:
        if self.path is None:
            return
        self.entry = {"digest": self.digest, "targets": targets,
                      "files": {**self.entry.get("files", {}), t5_dtype: files}}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.entry))
            os.replace(tmp, self.path)
        except OSError:  # a read-only or full cache folder: convert without the memo
            tmp.unlink(missing_ok=True)


