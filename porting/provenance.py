"""Provenance of a conversion: SHA-256 of the source files (on threads, while tensors stream) and the
contents of ``conversion.json``."""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vidport.porting.plan import ConversionPlan


# ----------------------------------------------------------------------------------------------
# Provenance: SHA-256 of the sources, computed on a second thread while tensors stream
# ----------------------------------------------------------------------------------------------
class Hasher(threading.Thread):
    """SHA-256 of the source files on a second thread. Planning starts it as soon as the files are known,
    so hashing overlaps the library imports and the tensor copy instead of adding to them."""

    def __init__(self, files: list[Path]):
        super().__init__(daemon=True)
        self.files = files
        self.result: dict[Path, str] = {}
        self.error: BaseException | None = None
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    WINDOW = 16 << 20  # bytes mapped at a time, per worker: the hash reads the page cache in place, RSS stays low

    def run(self) -> None:
        """Files in parallel, the largest first (one file's SHA-256 is sequential: a release's time is that
        of its largest file, the 11 GB umT5 pickle, not of all 17 GB), on up to ``WORKERS`` threads."""
        from concurrent.futures import ThreadPoolExecutor

        try:
            order = sorted(self.files, key=lambda p: -p.stat().st_size)
            with ThreadPoolExecutor(max_workers=max(1, min(self.WORKERS, len(order), os.cpu_count() or 1))) as pool:
                for path, digest in zip(order, pool.map(self._sha256, order)):
                    if digest is not None:
                        self.result[path] = digest
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            self.error = e

    WORKERS = 4

    def _sha256(self, path: Path) -> str | None:
        h = hashlib.sha256()
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            # mapped windows instead of read(): no copy of every byte into a buffer, which cost
            # 1-3.5 s of kernel time per 5.7 GB on the 2-core test machine
            for offset in range(0, size, self.WINDOW):
                if self._cancel.is_set():
                    return None
                with mmap.mmap(f.fileno(), min(self.WINDOW, size - offset), access=mmap.ACCESS_READ,
                               offset=offset) as window:
                    window.madvise(mmap.MADV_SEQUENTIAL)
                    h.update(window)
        return h.hexdigest()


def installed_version(dist: str) -> str:
    """The installed version of a distribution, or "unknown"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def provenance(cplan: ConversionPlan, hashes: dict[Path, str]) -> dict:
    """The contents of conversion.json."""
    release = cplan.release.resolve()
    files = []
    for p in cplan.source_files:
        rel = p.resolve().relative_to(release) if release in p.resolve().parents else p
        files.append({"path": str(rel), "bytes": p.stat().st_size, "sha256": hashes[p]})
    components = {}
    for c in cplan.components:
        text = c.name_map.dumps()
        components[c.name] = {
            "source": c.source.description,
            "map": {"path": c.map_origin, "sha256": hashlib.sha256(text.encode()).hexdigest(), "text": text},
            "tensors": len(c.tensors),
            "bytes": c.nbytes,
            "files": c.shard_names(),
            "dropped": list(c.plan.dropped),
            "keep_in_fp32_modules": list(c.keep_fp32),
            "dtype_changes": [{"tensor": t.name, "from": t.source_dtype, "to": t.dtype}
                              for t in c.tensors if t.dtype != t.source_dtype],
        }
    return {
        "vidport_version": installed_version("vidport"),
        "torch_version": installed_version("torch"),
        "family": cplan.family,
        "preset": cplan.preset,
        "dtype": cplan.dtype,
        "max_shard_size": cplan.max_shard_size,
        "source": {"release": str(cplan.release), "files": files},
        "components": components,
        "targets": cplan.targets_origin,
    }


