"""The shard writer: safetensors files written incrementally (header first, then tensor bytes in order),
unchanged tensors copied in the kernel, the rest cast or merged in pieces."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from vidport.porting.plan import ComponentPlan, TargetTensor
from vidport.porting.streaming import ReusedBuffer, cast_pieces

from vidport.dtypes import dtype_name, torch_dtypes
from vidport.errors import ConvertError

if TYPE_CHECKING:
    import torch


CHUNK_BYTES = 64 << 20  # a tensor is read, cast and written in pieces of this size: RSS stays flat


# ----------------------------------------------------------------------------------------------
# The writer
# ----------------------------------------------------------------------------------------------
def safetensors_header(tensors: list[tuple[str, str, tuple[int, ...], int]]) -> bytes:
    """The 8-byte length + JSON header (padded with spaces to 8 bytes) for tensors in file order."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, nbytes in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's raw little-endian bytes without a copy (when it is already contiguous)."""
    import torch

    flat = tensor.contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


class TensorSink:
    """Counts written tensors: the writer calls ``written`` once per tensor on disk. (Tests replace
    ``written`` to stop a run at an exact tensor; production code reads no test switch.)"""

    def __init__(self) -> None:
        self.count = 0

    def written(self) -> None:
        self.count += 1


class SafetensorsWriter:
    """Writes one safetensors file incrementally: the header first, then each tensor's bytes in order."""

    def __init__(self, path: Path, layout: list[TargetTensor], sink: TensorSink):
        self.path = path
        self.layout = layout
        self.sink = sink
        self.next = 0
        self.f = open(path, "wb", buffering=0)  # noqa: SIM115 - closed in close()
        self._write(safetensors_header([(t.name, t.dtype, t.shape, t.nbytes) for t in layout]))

    def _write(self, data) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            n = self.f.write(view)
            view = view[n:]

    def write(self, name: str, tensor: torch.Tensor) -> None:
        spec = self.layout[self.next]
        if name != spec.name or tuple(tensor.shape) != spec.shape or dtype_name(tensor.dtype) != spec.dtype:
            raise RuntimeError(f"writer expected {spec.name} {spec.shape} {spec.dtype}, got {name} "
                               f"{tuple(tensor.shape)} {dtype_name(tensor.dtype)}")
        self._write(tensor_bytes(tensor))
        self.next += 1
        self.sink.written()

    def write_pieces(self, name: str, pieces: Iterator[torch.Tensor]) -> None:
        """Write a tensor from 1-D pieces of its flattened elements (already in the output dtype)."""
        spec = self.layout[self.next]
        if name != spec.name:
            raise RuntimeError(f"writer expected {spec.name}, got {name}")
        written = 0
        for piece in pieces:
            if dtype_name(piece.dtype) != spec.dtype:
                raise RuntimeError(f"{name}: piece of dtype {dtype_name(piece.dtype)}, expected {spec.dtype}")
            data = tensor_bytes(piece)
            self._write(data)
            written += data.nbytes
        if written != spec.nbytes:
            raise RuntimeError(f"{name}: wrote {written} bytes, expected {spec.nbytes}")
        self.next += 1
        self.sink.written()

    def copy(self, name: str, fd: int, offset: int, nbytes: int) -> None:
        """Write a tensor whose bytes already lie in a file, unchanged: copied in the kernel
        (copy_file_range, as `cp` does), never through Python memory."""
        spec = self.layout[self.next]
        if name != spec.name or nbytes != spec.nbytes:
            raise RuntimeError(f"writer expected {spec.name} ({spec.nbytes} bytes), got {name} ({nbytes} bytes)")
        done = 0
        while done < nbytes:
            try:
                n = os.copy_file_range(fd, self.f.fileno(), nbytes - done, offset + done)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                n = 0
            if n == 0:  # unsupported here or end of file: copy through a buffer
                chunk = os.pread(fd, min(nbytes - done, 64 << 20), offset + done)
                if not chunk:
                    raise ConvertError(f"source file ended inside tensor {name!r} (truncated download?)")
                self._write(chunk)
                n = len(chunk)
            done += n
        self.next += 1
        self.sink.written()

    def close(self) -> None:
        if self.next != len(self.layout):
            raise RuntimeError(f"{self.path}: {len(self.layout) - self.next} tensors were never written")
        self.f.close()  # fsync'd on the Flusher's thread, so the disk writes it back while the next one streams


def write_component(comp: ComponentPlan, folder: Path, sink: TensorSink, on_bytes: Callable[[int], None],
                    on_shard: Callable[[Path], None] = lambda path: None) -> dict[str, str]:
    """Stream one component's tensors into its shard files (``on_shard`` gets each one as it is complete);
    returns {tensor: shard file}."""
    folder.mkdir(parents=True, exist_ok=True)
    where: dict[str, str] = {}
    cast_buffer = ReusedBuffer()
    for shard_name, layout in zip(comp.shard_names(), comp.shards):
        writer = SafetensorsWriter(folder / shard_name, layout, sink)
        try:
            for t in layout:
                where[t.name] = shard_name
                if t.op.kind in ("rename", "tie", "reshape") and hasattr(comp.source, "chunks"):
                    # one source tensor, bytes in the same order: never hold the whole tensor
                    src = t.op.sources[0]
                    if t.dtype == t.source_dtype and getattr(comp.source, "copyable", lambda _: False)(src):
                        writer.copy(t.name, *comp.source.locate(src))  # unchanged: copied in the kernel
                    else:
                        dtype = torch_dtypes()[t.dtype]
                        writer.write_pieces(t.name, cast_pieces(comp.source.chunks(src, CHUNK_BYTES), dtype,
                                                                cast_buffer))
                    on_bytes(t.nbytes)
                    continue
                fetched: list[torch.Tensor] = []

                def get(key: str, _fetched=fetched) -> torch.Tensor:
                    _fetched.append(comp.source.get(key))
                    return _fetched[-1]

                out = t.op.compute(get).to(torch_dtypes()[t.dtype])
                writer.write(t.name, out)
                release = getattr(comp.source, "release", None)
                if release is not None:
                    for src in fetched:
                        release(src)
                del fetched, out
                on_bytes(t.nbytes)
        finally:
            if not writer.f.closed:
                if writer.next == len(layout):
                    writer.close()
                    on_shard(writer.path)
                else:
                    writer.f.close()
    if len(comp.shards) > 1:
        index = {"metadata": {"total_size": comp.nbytes}, "weight_map": dict(sorted(where.items()))}
        write_text(folder / f"{comp.weights_stem}.safetensors.index.json", json.dumps(index, indent=2) + "\n")
    return where


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        shutil.copyfileobj(fi, fo, 1 << 20)


