"""Streaming readers of official weights files for `port convert`: tensors come out one at a time, in
pieces, and unchanged ones are located by byte range so the writer can copy them in the kernel. No
tensor is held whole and no mmap page stays resident after use."""

from __future__ import annotations

import ctypes
import functools
import json
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from vidport.porting.sources import StateDictSource, TensorInfo, pread_full, read_safetensors_header
from vidport.porting.torchzip import read_table

from vidport.dtypes import torch_dtypes
from vidport.errors import ConvertError

if TYPE_CHECKING:
    import torch


# ----------------------------------------------------------------------------------------------
# Streaming readers
# ----------------------------------------------------------------------------------------------
class StreamingSafetensors(StateDictSource):
    """One or more safetensors files read with pread: each ``get`` returns a fresh tensor, no mmap."""

    def __init__(self, paths: list[Path], description: str):
        super().__init__()
        self.description = description
        self._paths = [Path(p) for p in paths]
        self._where: dict[str, tuple[Path, int, int]] = {}  # name -> (file, absolute offset, nbytes)
        for path in self._paths:
            header = read_safetensors_header(path)
            with open(path, "rb") as f:
                base = 8 + int.from_bytes(f.read(8), "little")
            entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                             key=lambda kv: kv[1]["data_offsets"][0])
            for k, v in entries:
                if k in self._where:
                    raise ConvertError(f"{description}: tensor {k!r} appears in two files")
                start, end = v["data_offsets"]
                self._infos[k] = TensorInfo(k, tuple(v["shape"]), v["dtype"])
                self._where[k] = (path, base + start, end - start)
        self._fds: dict[Path, int] = {}
        self._buffer = ReusedBuffer()

    def locate(self, name: str) -> tuple[int, int, int]:
        """(open file descriptor, absolute offset, byte count) of a tensor's raw bytes."""
        path, offset, nbytes = self._where[name]
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return fd, offset, nbytes

    def copyable(self, name: str) -> bool:
        """Every tensor's bytes lie in its file as they are written: ``locate`` + kernel copy."""
        return True

    def get(self, name: str) -> torch.Tensor:
        import torch

        fd, offset, nbytes = self.locate(name)
        path = self._where[name][0]
        info = self._infos[name]
        out = torch.empty(info.shape, dtype=torch_dtypes()[info.dtype])
        if nbytes and not pread_full(fd, memoryview(out.reshape(-1).view(torch.uint8).numpy()), offset):
            raise ConvertError(f"{path}: file ended inside tensor {name!r} (truncated download?)")
        return out

    def chunks(self, name: str, max_bytes: int) -> Iterator[torch.Tensor]:
        """The tensor's elements, flattened, in 1-D pieces of at most ``max_bytes``. The pieces share one
        buffer, reused for the whole file (fresh memory for every piece cost a page fault per 4 KB, seconds
        per GB): a piece is valid until the next one is asked for."""
        fd, offset, nbytes = self.locate(name)
        dtype = torch_dtypes()[self._infos[name].dtype]
        step = max(max_bytes // dtype.itemsize, 1) * dtype.itemsize
        for start in range(0, nbytes, step):
            raw = self._buffer.take(min(step, nbytes - start))
            if not pread_full(fd, memoryview(raw.numpy()), offset + start):
                raise ConvertError(f"{self._where[name][0]}: file ended inside tensor {name!r} "
                                   "(truncated download?)")
            yield raw.view(dtype)

    def release(self, tensor: torch.Tensor) -> None:
        """Nothing to release: each tensor is its own buffer, freed when dropped."""

    def files(self) -> list[Path]:
        return list(self._paths)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class ReusedBuffer:
    """One growing byte buffer handed out again and again (streaming reads, cast outputs)."""

    def __init__(self) -> None:
        self._buf = None

    def take(self, nbytes: int) -> torch.Tensor:
        """The first ``nbytes`` of the buffer as a uint8 tensor; valid until the next ``take``."""
        if self._buf is None or self._buf.numel() < nbytes:
            import torch

            self._buf = None
            self._buf = torch.empty(nbytes, dtype=torch.uint8)
        return self._buf[:nbytes]


def cast_pieces(pieces: Iterator[torch.Tensor], dtype: torch.dtype, buffer: ReusedBuffer) -> Iterator[torch.Tensor]:
    """Each piece cast to ``dtype`` into one reused buffer (valid until the next piece)."""
    for piece in pieces:
        if piece.dtype == dtype:
            yield piece
            continue
        out = buffer.take(piece.numel() * dtype.itemsize).view(dtype)
        out.copy_(piece)
        yield out


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _file_mappings(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process's memory mappings of ``path`` (from /proc/self/maps)."""
    target = str(Path(path).resolve())
    out = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip("\n") == target:
                    lo, hi = (int(x, 16) for x in fields[0].split("-"))
                    out.append((lo, hi))
    except OSError:
        return []
    return out


def _madvise_dontneed(start: int, size: int, mappings: list[tuple[int, int]]) -> None:
    """Drop clean file-backed pages in [start, start+size) so they leave our RSS (re-read from the file if
    touched again). The range is widened to whole pages but never beyond the file's mapping."""
    page = mmap.PAGESIZE
    for map_lo, map_hi in mappings:
        if map_lo <= start < map_hi:
            lo = max(start - start % page, map_lo)
            hi = min(-(-(start + size) // page) * page, map_hi)
            _libc().madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), 4)  # MADV_DONTNEED
            return


class StreamingPickle(StateDictSource):
    """A ``.pth`` checkpoint. Its tensor table is read without torch (``porting.torchzip``), and an
    unchanged contiguous tensor is copied from its byte range in the kernel, like a safetensors one.
    Tensors needed as values (casts, merges) come from ``torch.load(mmap=True, weights_only=True)``, opened
    on first use; the pages of each are released after use. A file the table reader cannot describe
    (a legacy pickle, say) is opened with torch.load at once."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)
        self.description = str(self.path)
        self._inner = None
        self._maps: list[tuple[int, int]] = []
        self._fd: int | None = None
        self._table = read_table(self.path)
        if self._table is None:
            self._infos = dict(self._open().infos)
        else:
            self._infos = {k: TensorInfo(k, t.shape, t.dtype) for k, t in self._table.items()}

    def _open(self):
        """The torch.load'ed checkpoint; it must describe the tensors as the table did."""
        if self._inner is None:
            from vidport.porting.sources import PickleSource

            before = set(_file_mappings(self.path))
            inner = PickleSource(self.path)
            if self._infos and inner.infos != self._infos:
                raise ConvertError(f"{self.path}: torch.load and the checkpoint's tensor table disagree; "
                                   "re-save it with torch.save(state_dict, ...)")
            # the address ranges where torch.load mapped this file just now (none for a legacy pickle)
            self._maps = sorted(set(_file_mappings(self.path)) - before)
            self._inner = inner
        return self._inner

    def copyable(self, name: str) -> bool:
        return self._table is not None and self._table[name].contiguous

    def locate(self, name: str) -> tuple[int, int, int]:
        """(open file descriptor, absolute offset, byte count) of a ``copyable`` tensor's bytes."""
        t = self._table[name]
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd, t.offset, t.nbytes

    def release(self, tensor: torch.Tensor) -> None:
        """Drop the pages under ``tensor``, only where they are this file's mapping (never heap memory,
        e.g. a legacy pickle that torch could not mmap)."""
        start, size = tensor.data_ptr(), tensor.numel() * tensor.element_size()
        if size and tensor.is_contiguous() and any(lo <= start and start + size <= hi for lo, hi in self._maps):
            _madvise_dontneed(start, size, self._maps)

    def get(self, name: str) -> torch.Tensor:
        return self._open().get(name)

    def chunks(self, name: str, max_bytes: int) -> Iterator[torch.Tensor]:
        """1-D views of the mmap'd tensor, at most ``max_bytes`` each; each piece's pages are released
        once the consumer asks for the next one."""
        flat = self.get(name).reshape(-1)
        step = max(max_bytes // flat.element_size(), 1)
        for start in range(0, flat.numel(), step):
            piece = flat[start:start + step]
            yield piece
            self.release(piece)

    def files(self) -> list[Path]:
        return [self.path]

    def close(self) -> None:
        if self._inner is not None:
            self._inner._tensors = {}
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def open_streaming(path: Path) -> StateDictSource:
    """A streaming reader for one official weights file (safetensors, its index, or a pickle)."""
    path = Path(path)
    name = path.name
    if name.endswith(".safetensors.index.json"):
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            raise ConvertError(f"{path}: not a safetensors index (needs a 'weight_map' object)") from None
        shards = [path.parent / s for s in dict.fromkeys(weight_map.values())]
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise ConvertError(f"{path}: names shard(s) {', '.join(missing)} which do not exist; re-download them")
        src = StreamingSafetensors(shards, str(path))
        stray = sorted(set(src.keys()) ^ set(weight_map))
        if stray:
            raise ConvertError(f"{path}: index and shards disagree on {len(stray)} tensor(s), e.g. {stray[:3]}")
        src._paths.insert(0, path)
        return src
    if name.endswith(".safetensors"):
        return StreamingSafetensors([path], str(path))
    return StreamingPickle(path)


