"""`port convert`: stream an official release into a Diffusers-format repo, atomically.

The conversion is planned before a byte is written: every component's name map is applied to the
source key names, checked strictly against the target layout (every source tensor used or dropped on
purpose, every target parameter made once with its shape), and each target tensor gets its output
dtype, shard file and byte offset. The target layout is the family's shipped one for the published
configs (``porting.layouts``), else the diffusers/transformers models built on the meta device (memoised,
``TargetCache``). (With ``--dtype keep`` the check may finish on a thread while unchanged tensors
already stream into the temporary folder: see ``DeferredTargets``. Nothing is published before it
passes.) Then the writer runs:

- Streaming: one tensor at a time, in pieces of ``CHUNK_BYTES``. Unchanged tensors are copied in the
  kernel (``copy_file_range``) from their byte range: a safetensors file's from its header, a ``.pth``
  checkpoint's from its tensor table (``porting.torchzip``, read without torch). Tensors needed as values
  (casts, merges) are read with ``pread`` from safetensors, so no mmap pages pile up in the process, or
  from ``torch.load(mmap=True, weights_only=True)`` for checkpoints, each piece's pages released
  (``madvise(MADV_DONTNEED)``) once written. torch is imported only then. Safetensors shards are written
  by our own writer: the header first, then tensor bytes in order.
- Atomic: everything goes into a temporary folder beside the target, is fsync'd (each shard on a
  ``Flusher`` thread as soon as it is complete, the whole tree again before the rename), and is renamed
  onto the target at the end (with --force, swapped with the old one atomically; the old one is removed
  only after). A killed run leaves only a hidden temporary folder, which the next run removes.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import json
import mmap
import os
import queue
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vidport.porting.dtypes import FLOATING, ITEMSIZE
from vidport.porting.errors import UserError
from vidport.porting.namemap import NameMap, Op, Plan
from vidport.porting.sources import (
    StateDictSource,
    TensorInfo,
    dtype_name,
    pread_full,
    read_safetensors_header,
    torch_dtypes,
)
from vidport.porting.torchzip import read_table

if TYPE_CHECKING:
    import torch

# --dtype -> safetensors dtype name. Planning and kernel copies run without torch: it is imported only
# where tensor values are needed (casts, merges/splits, tensors of a checkpoint torch must unpickle).
DTYPES: dict[str, str | None] = {"keep": None, "bf16": "BF16", "fp16": "F16", "fp32": "F32"}
TARGETS_FROM = ("auto", "libraries")  # --targets: where the strict target layout comes from
TEST_KILL_ENV = "VIDPORT_TEST_KILL_AFTER_TENSORS"  # test hook, read only by TensorSink
CHUNK_BYTES = 64 << 20  # a tensor is read, cast and written in pieces of this size: RSS stays flat
TMP_TAG = ".vidport-tmp-"
OLD_TAG = ".vidport-old-"
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


class ConvertError(UserError):
    """A conversion that cannot start or finish; the target is untouched."""


def parse_size(text: str) -> int:
    """'5GB' -> 5_000_000_000, '512MiB' -> 536870912, '1000' -> 1000 (as Hugging Face spells sizes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _SIZE_UNITS:
        raise ConvertError(f"--max-shard-size {text!r}: expected a size such as 5GB, 500MB or 2GiB")
    size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])
    if size <= 0:
        raise ConvertError(f"--max-shard-size {text!r} must be positive")
    return size


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


# ----------------------------------------------------------------------------------------------
# The plan: what gets written where
# ----------------------------------------------------------------------------------------------
@dataclass
class TargetTensor:
    name: str
    op: Op
    shape: tuple[int, ...]
    source_dtype: str  # safetensors spelling
    dtype: str  # output dtype, safetensors spelling

    @property
    def nbytes(self) -> int:
        n = ITEMSIZE[self.dtype]
        for s in self.shape:
            n *= s
        return n


@dataclass
class ComponentPlan:
    """One weights component (``transformer``, ``vae``, ``text_encoder``) fully planned."""

    name: str
    source: StateDictSource
    name_map: NameMap
    map_origin: str
    plan: Plan
    weights_stem: str  # "diffusion_pytorch_model" (diffusers) or "model" (transformers)
    keep_fp32: tuple[str, ...]  # module names kept in fp32 under a cast; "*" = the whole component
    target_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # the target model's state dict
    tensors: list[TargetTensor] = field(default_factory=list)
    shards: list[list[TargetTensor]] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def shard_names(self) -> list[str]:
        if len(self.shards) == 1:
            return [f"{self.weights_stem}.safetensors"]
        n = len(self.shards)
        return [f"{self.weights_stem}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


@dataclass
class ConversionPlan:
    family: str
    preset: str
    release: Path
    dtype: str
    max_shard_size: int
    components: list[ComponentPlan]
    files: dict[str, str]  # relative path -> text (configs, model_index.json, scheduler)
    copies: dict[str, Path]  # relative path -> source file (tokenizer)
    source_files: list[Path]
    hasher: Hasher | None = None  # already hashing source_files, when planning started it
    deferred: DeferredTargets | None = None  # target check still running (see DeferredTargets)
    targets_origin: str = ""  # where the target layout came from (shipped layouts or the libraries)

    def complete(self) -> None:
        """Wait for a deferred target check and apply it (strict verification, config files)."""
        if self.deferred is not None:
            deferred, self.deferred = self.deferred, None
            deferred.complete(self)

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.components) + sum(len(t.encode()) for t in self.files.values()) + \
            sum(p.stat().st_size for p in self.copies.values())


def keeps_fp32(name: str, keep: tuple[str, ...]) -> bool:
    """diffusers' rule for ``_keep_in_fp32_modules``: a module name is one dotted part of the key."""
    if "*" in keep:
        return True
    parts = name.split(".")
    return any(k in parts for k in keep)


def output_dtype(name: str, source_dtype: str, requested: str, keep: tuple[str, ...]) -> str:
    """keep: the source dtype. A cast applies to floating tensors; tensors of keep-in-fp32 modules are
    never cast *down* (an fp32 source stays fp32 under bf16/fp16), only up (to fp32)."""
    target = DTYPES[requested]
    if target is None or source_dtype not in FLOATING or source_dtype == target:
        return source_dtype
    if keeps_fp32(name, keep) and ITEMSIZE[source_dtype] > ITEMSIZE[target]:
        return source_dtype
    return target


def plan_component(name: str, source: StateDictSource, name_map: NameMap, map_origin: str,
                   target_shapes: dict[str, tuple[int, ...]] | None, *, weights_stem: str,
                   keep_fp32: tuple[str, ...], dtype: str, max_shard_size: int) -> ComponentPlan:
    """Apply the map to the source keys, verify strictly against the target, assign dtypes and shards.

    ``target_shapes=None`` plans from the source side only (every key matched, no target made twice);
    ``verify_component`` must then check the real target before the result is published."""
    plan = name_map.plan(source.keys())
    if target_shapes is None:
        target_shapes = {op.target: tuple(op.target_shape(source.shapes())) for op in plan.ops}
    _verify(name, source, map_origin, plan, target_shapes)
    comp = ComponentPlan(name, source, name_map, map_origin, plan, weights_stem, keep_fp32, dict(target_shapes))
    infos = source.infos
    for op in plan.ops:
        src_dtypes = {infos[s].dtype for s in op.sources}
        if len(src_dtypes) != 1:
            raise ConvertError(f"{name}: {op.target} merges tensors of different dtypes {sorted(src_dtypes)}")
        src_dtype = src_dtypes.pop()
        out = output_dtype(op.target, src_dtype, dtype, keep_fp32)
        comp.tensors.append(TargetTensor(op.target, op, tuple(target_shapes[op.target]), src_dtype, out))
    comp.shards = shard(comp.tensors, max_shard_size)
    return comp


def _verify(name: str, source: StateDictSource, map_origin: str, plan: Plan,
            target_shapes: dict[str, tuple[int, ...]]) -> None:
    try:
        plan.verify(source.shapes(), target_shapes, what=f"{name} target")
    except UserError as e:
        raise ConvertError(f"{name}: {source.description} does not convert with {map_origin}: {e}") from None


def verify_component(comp: ComponentPlan, target_shapes: dict[str, tuple[int, ...]],
                     keep_fp32: tuple[str, ...], dtype: str) -> None:
    """The strict check of a component planned from the source side, against its real target."""
    _verify(comp.name, comp.source, comp.map_origin, comp.plan, target_shapes)
    comp.target_shapes = dict(target_shapes)
    comp.keep_fp32 = keep_fp32
    for t in comp.tensors:
        if output_dtype(t.name, t.source_dtype, dtype, keep_fp32) != t.dtype:
            raise ConvertError(f"{comp.name}: {t.name} was planned as {t.dtype} before the keep-in-fp32 list "
                               "was known; plan casts with the targets first")


class DeferredTargets(threading.Thread):
    """Builds the target models and config files (importing diffusers/transformers takes seconds to tens
    of seconds) while unchanged tensors already stream into the temporary folder. Nothing is published
    before ``complete`` has checked every component strictly against them."""

    def __init__(self, build: Callable[[], tuple[dict, Callable[[], dict[str, str]]]]):
        super().__init__(daemon=True)
        self.build = build
        self.value = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.value = self.build()
        except BaseException as e:  # noqa: BLE001 - re-raised by complete() in the main thread
            self.error = e

    def complete(self, cplan: ConversionPlan) -> None:
        self.join()
        if self.error is not None:
            raise self.error
        targets, make_files, cplan.targets_origin = self.value
        for comp in cplan.components:
            shapes, _, keep = targets[comp.name]
            verify_component(comp, shapes, keep, cplan.dtype)
        cplan.files = make_files()


def _tensor_table(comp: ComponentPlan) -> dict[str, tuple[int, ...]]:
    """The target model's keys and shapes (what the emitted script checks its output against)."""
    return comp.target_shapes


def shard(tensors: list[TargetTensor], max_size: int) -> list[list[TargetTensor]]:
    """Greedy, in write order: a new shard starts when the next tensor would overflow this one."""
    shards: list[list[TargetTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_size:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


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
    """Counts written tensors. Test mode: ``VIDPORT_TEST_KILL_AFTER_TENSORS=N`` SIGKILLs this process right
    after the N-th tensor is written, to prove a killed run leaves no target behind."""

    def __init__(self) -> None:
        raw = os.environ.get(TEST_KILL_ENV)
        self.kill_after = int(raw) if raw else None
        self.count = 0

    def written(self) -> None:
        self.count += 1
        if self.kill_after is not None and self.count >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)


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


def fsync_tree(root: Path) -> None:
    """fsync every file, then every folder, of a finished tree, once before it is published (not each
    shard as it closes, which would stop the copy until the disk has written the shard back)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync_path(os.path.join(dirpath, name))
    for dirpath, _, _ in os.walk(root):
        _fsync_path(dirpath)


class Flusher(threading.Thread):
    """fsyncs each finished shard on its own thread while the next ones stream, so the disk writes the
    output back from the start instead of when the kernel's dirty-page threshold is reached (10% of RAM
    by default: 12 GB on a 128 GB machine) or at the final fsync. Best effort: ``publish`` fsyncs the
    whole tree again (cheap for files already on disk) and that is where an error is reported."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self._queue: queue.SimpleQueue[Path | None] = queue.SimpleQueue()

    def add(self, path: Path) -> None:
        self._queue.put(path)

    def finish(self) -> None:
        self._queue.put(None)
        if self.ident is not None:
            self.join()

    def run(self) -> None:
        while (path := self._queue.get()) is not None:
            try:
                _fsync_path(path)
            except OSError:
                pass


def _fsync_path(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


# ----------------------------------------------------------------------------------------------
# Atomic output folder
# ----------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(out: Path, log: Callable[[str], None]) -> None:
    """Temporary folders left by killed runs for this target (their process is gone) are removed."""
    parent = out.parent
    if not parent.is_dir():
        return
    for tag in (TMP_TAG, OLD_TAG):
        prefix = f".{out.name}{tag}"
        for p in parent.iterdir():
            if not p.name.startswith(prefix):
                continue
            try:
                pid = int(p.name[len(prefix):].split("-")[0])
            except ValueError:
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                log(f"removing {p} left by an interrupted run (pid {pid})")
                shutil.rmtree(p, ignore_errors=True)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE). False where unsupported."""
    try:
        fn = _libc().renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD = -100
    rc = fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            return False
        raise OSError(err, os.strerror(err), str(b))
    return True


def publish(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished temporary folder onto the target; with force, the old target goes only after."""
    fsync_tree(tmp)
    if out.exists() or out.is_symlink():
        if not force:
            raise ConvertError(f"{out} already exists; pass --force to replace it")
        if _exchange(tmp, out):
            old = tmp  # after the swap the old repo sits at the temporary path
        else:
            old = out.parent / f".{out.name}{OLD_TAG}{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
        _fsync_path(out.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
    _fsync_path(out.parent)


def _disk_full(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


# ----------------------------------------------------------------------------------------------
# Run a plan
# ----------------------------------------------------------------------------------------------
@dataclass
class ComponentReport:
    component: str
    tensors: int
    bytes: int
    dtype: str
    seconds: float


def execute(cplan: ConversionPlan, out: Path, *, force: bool = False, progress: bool = True,
            log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> list[ComponentReport]:
    """Write the planned repo to ``out`` atomically. Returns the per-component summary."""
    from tqdm import tqdm

    out = Path(out).absolute()
    if (out.exists() or out.is_symlink()) and not force:
        raise ConvertError(f"{out} already exists; pass --force to replace it (the old one is removed only "
                           "after the new one is complete)")
    parent = out.parent
    if not parent.is_dir():
        try:
            parent.mkdir(parents=True)
        except OSError as e:
            raise ConvertError(f"cannot create the output folder's parent {parent}: {e.strerror}") from None
    remove_stale_temps(out, log)
    need = cplan.nbytes
    free = shutil.disk_usage(parent).free
    if free < need:
        raise ConvertError(f"not enough free space in {parent}: the repo needs {_human(need)}, "
                           f"{_human(free)} free; free some space or pick another --out")
    tmp = parent / f".{out.name}{TMP_TAG}{os.getpid()}"
    try:
        tmp.mkdir()
    except OSError as e:
        raise ConvertError(f"cannot write in {parent}: {e.strerror}; pick a writable --out") from None

    hasher = cplan.hasher if cplan.hasher is not None else Hasher(cplan.source_files)
    if hasher.ident is None:  # not started yet
        hasher.start()
    reports: list[ComponentReport] = []
    sink = TensorSink()
    flusher = Flusher()
    flusher.start()
    current = str(tmp)
    # The target check (imports of diffusers/transformers) runs Python on another thread while this one
    # issues a syscall per tensor; each return from a syscall waits for the GIL up to the switch interval
    # (5 ms by default): 0.1 ms keeps the ~800 small tensors of a DiT from waiting seconds in all.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, 1e-4))
    try:
        bar = tqdm(total=sum(c.nbytes for c in cplan.components), unit="B", unit_scale=True, unit_divisor=1024,
                   desc="convert", file=sys.stderr, disable=not progress, dynamic_ncols=True)
        with bar:
            for comp in cplan.components:
                t0 = time.perf_counter()
                bar.set_description(comp.name)
                current = f"{tmp / comp.name}"
                write_component(comp, tmp / comp.name, sink, bar.update, flusher.add)
                reports.append(ComponentReport(comp.name, len(comp.tensors), comp.nbytes,
                                               _dtype_summary(comp), time.perf_counter() - t0))
                if cplan.deferred is not None and not cplan.deferred.is_alive():
                    cplan.complete()  # the target check is done: fail now rather than after all components
        t0 = time.perf_counter()
        cplan.complete()  # strict check against the target models before anything is published
        for rel, text in cplan.files.items():
            current = rel
            write_text(tmp / rel, text)
        for rel, src in cplan.copies.items():
            current = rel
            copy_file(src, tmp / rel)
        reports.append(ComponentReport("configs+checks", 0,
                                       sum(len(t.encode()) for t in cplan.files.values()) +
                                       sum(p.stat().st_size for p in cplan.copies.values()), "-",
                                       time.perf_counter() - t0))
        t0 = time.perf_counter()
        hasher.join()  # what is left of hashing the sources (it started during planning)
        if hasher.error is not None:
            raise ConvertError(f"cannot hash the source files: {hasher.error}")
        write_text(tmp / "conversion.json", json.dumps(provenance(cplan, hasher.result), indent=2) + "\n")
        reports.append(ComponentReport("sha256 (wait)", 0, 0, "-", time.perf_counter() - t0))
        t0 = time.perf_counter()
        current = str(out)
        flusher.finish()
        publish(tmp, out, force)
        reports.append(ComponentReport("fsync+rename", 0, 0, "-", time.perf_counter() - t0))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _disk_full(e):
            raise ConvertError(f"disk full while writing {current} (needs {_human(need)} in all); {out} is "
                               "untouched and the temporary folder was removed") from None
        raise ConvertError(f"cannot write {current}: {e.strerror or e}; {out} is untouched") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        flusher.finish()
        sys.setswitchinterval(switch)
        for comp in cplan.components:
            close = getattr(comp.source, "close", None)
            if close is not None:
                close()
    return reports


def _dtype_summary(comp: ComponentPlan) -> str:
    counts: dict[str, int] = {}
    for t in comp.tensors:
        counts[t.dtype] = counts.get(t.dtype, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return ",".join(f"{k}x{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


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


def summary_table(reports: list[ComponentReport]) -> str:
    rows = [("component", "tensors", "bytes", "dtype", "seconds")]
    for r in reports:
        rows.append((r.component, str(r.tensors), _human(r.bytes), r.dtype, f"{r.seconds:.2f}"))
    total_s = sum(r.seconds for r in reports)
    rows.append(("total", str(sum(r.tensors for r in reports)), _human(sum(r.bytes for r in reports)), "",
                 f"{total_s:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for j, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i in (0, 3) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0 or j == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Planning a release of a family
# ----------------------------------------------------------------------------------------------
def plan_release(release: str | Path, family_name: str, *, dtype: str = "keep", max_shard_size: int = 5 * 10**9,
                 maps: dict[str, Path] | None = None, defer: bool = False,
                 targets_from: str = "auto") -> ConversionPlan:
    """Plan the conversion of an official release (nothing is written). ``maps`` overrides the family's
    committed official->Diffusers maps per component. ``defer``: with ``--dtype keep``, check against the
    target models on a thread while ``execute`` streams (``ConversionPlan.complete`` joins it).
    ``targets_from``: "auto" (the family's shipped layout of a known config, else the libraries) or
    "libraries" (always build the target models with diffusers/transformers)."""
    from vidport.runtime.families import get_family

    if targets_from not in TARGETS_FROM:
        raise ConvertError(f"--targets {targets_from!r}: choose one of {', '.join(TARGETS_FROM)}")
    if dtype not in DTYPES:
        raise ConvertError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    release = Path(release)
    if not release.is_dir():
        raise ConvertError(f"{release}: no such release folder")
    fam = get_family(family_name)
    builder = RELEASE_PLANNERS.get(family_name)
    unknown = sorted(set(maps or {}) - set(fam.COMPONENTS))
    if unknown:
        raise ConvertError(f"--map names unknown component(s) {', '.join(unknown)}; {family_name} has "
                           f"{', '.join(fam.COMPONENTS)}")
    if builder is None:
        raise ConvertError(f"port convert does not know the Diffusers layout of {family_name} yet")
    return builder(fam, release, dtype=dtype, max_shard_size=max_shard_size, maps=maps or {}, defer=defer,
                   targets_from=targets_from)


def _load_map(path: Path, component: str) -> NameMap:
    if not Path(path).is_file():
        raise ConvertError(f"the official->Diffusers map for {component} is missing ({path}); write it with "
                           "`port diff-keys --write-map` or pull the committed one")
    return NameMap.load(path)


def _meta_state_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _plan_wan(fam, release: Path, *, dtype: str, max_shard_size: int, maps: dict[str, Path],
              defer: bool = False, targets_from: str = "auto") -> ConversionPlan:
    """Wan2.1 T2V: official release -> the layout of Wan-AI/Wan2.1-T2V-*-Diffusers (WanPipeline)."""
    # 1. every file the release must have, reported together
    tok_dir = release / fam.OFFICIAL_FILES["tokenizer"]
    missing = [n for n in ("config.json", fam.OFFICIAL_FILES["vae"], fam.OFFICIAL_FILES["text_encoder"])
               if not (release / n).is_file()]
    if not any(release.glob("diffusion_pytorch_model*.safetensors*")):
        missing.insert(0, fam.OFFICIAL_FILES["transformer"])
    if not tok_dir.is_dir() or not any(p.is_file() for p in tok_dir.iterdir()):
        missing.append(fam.OFFICIAL_FILES["tokenizer"] + "/")
    if missing:
        raise ConvertError(f"{release}: not a complete {fam.NAME} release, missing {', '.join(missing)}")

    # 2. the DiT config from the official config.json; the sources; start hashing them right away
    dit = fam.read_official_config(release)
    presets = {p: fam.dit_config(p) for p in fam.PRESETS}
    preset = next((p for p, c in presets.items() if c == dit), None) or next(
        (p for p, c in presets.items() if (c.dim, c.num_layers) == (dit.dim, dit.num_layers)), "1.3b")
    sources = {c: open_streaming(fam.official_component_file(release, c)) for c in fam.COMPONENTS}
    tok_files = sorted(p for p in tok_dir.rglob("*") if p.is_file())
    source_files = [release / "config.json"] + [f for c in fam.COMPONENTS for f in sources[c].files()] + tok_files
    hasher = Hasher(source_files)
    hasher.start()
    try:
        return _plan_wan_components(fam, release, dit, preset, sources, tok_dir, tok_files, source_files, hasher,
                                    dtype=dtype, max_shard_size=max_shard_size, maps=maps, defer=defer,
                                    targets_from=targets_from)
    except BaseException:
        hasher.cancel()
        raise


WAN_WEIGHT_STEMS = {"transformer": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model",
                    "text_encoder": "model"}


def _plan_wan_components(fam, release, dit, preset, sources, tok_dir, tok_files, source_files, hasher, *,
                         dtype, max_shard_size, maps, defer, targets_from) -> ConversionPlan:
    name_maps = {}
    for name in fam.COMPONENTS:
        map_path = Path(maps.get(name, fam.OFFICIAL_TO_DIFFUSERS[name]))
        name_maps[name] = (_load_map(map_path, name), _display_path(map_path))
    copies = {f"tokenizer/{p.relative_to(tok_dir).as_posix()}": p for p in tok_files}

    def plan_all(targets: dict | None) -> list[ComponentPlan]:
        return [plan_component(name, sources[name], *name_maps[name], targets[name][0] if targets else None,
                               weights_stem=WAN_WEIGHT_STEMS[name], keep_fp32=targets[name][2] if targets else (),
                               dtype=dtype, max_shard_size=max_shard_size) for name in fam.COMPONENTS]

    if defer and dtype == "keep":  # no cast: dtypes are known without the keep-in-fp32 lists
        components = plan_all(None)
        t5_dtype = _majority_dtype(components[fam.COMPONENTS.index("text_encoder")])
        deferred = DeferredTargets(lambda: _wan_targets_cached(fam, dit, preset, sources, tok_dir, lambda: t5_dtype,
                                                               targets_from))
        deferred.start()
        return ConversionPlan(fam.NAME, preset, release, dtype, max_shard_size, components, {}, copies,
                              source_files, hasher, deferred)
    holder: dict[str, list[ComponentPlan]] = {}
    targets, make_files, origin = _wan_targets_cached(
        fam, dit, preset, sources, tok_dir,
        lambda: _majority_dtype(holder["c"][fam.COMPONENTS.index("text_encoder")]), targets_from)
    holder["c"] = components = plan_all(targets)
    return ConversionPlan(fam.NAME, preset, release, dtype, max_shard_size, components, make_files(), copies,
                          source_files, hasher, targets_origin=origin)


def _wan_target_configs(fam, dit, preset, sources) -> dict[str, dict]:
    """The configs of the target models: the DiT's from the official config.json, the VAE's and umT5's the
    family's with the dimensions read from the tensor shapes. Plain data, no library imported."""
    vae_cfg = dict(fam.vae_config(preset))
    vae_shapes = sources["vae"].shapes()
    if "encoder.conv1.weight" in vae_shapes and "conv2.weight" in vae_shapes:
        vae_cfg.update(base_dim=vae_shapes["encoder.conv1.weight"][0], z_dim=vae_shapes["conv2.weight"][0])
    t5_cfg = dict(fam.text_encoder_config(preset))
    t5_shapes = sources["text_encoder"].shapes()
    if "token_embedding.weight" in t5_shapes and "blocks.0.pos_embedding.embedding.weight" in t5_shapes:
        vocab, d_model = t5_shapes["token_embedding.weight"]
        buckets, heads = t5_shapes["blocks.0.pos_embedding.embedding.weight"]
        t5_cfg.update(vocab_size=vocab, d_model=d_model, num_heads=heads, relative_attention_num_buckets=buckets,
                      num_layers=len({k.split(".")[1] for k in t5_shapes if k.startswith("blocks.")}),
                      d_kv=t5_shapes["blocks.0.attn.q.weight"][0] // heads,
                      d_ff=t5_shapes["blocks.0.ffn.fc1.weight"][0])
    scheduler = dict(prediction_type="flow_prediction", use_flow_sigmas=True,
                     num_train_timesteps=fam.NUM_TRAIN_TIMESTEPS,
                     flow_shift=fam.SAMPLING.get(preset, fam.SAMPLING["1.3b"])["flow_shift"])
    return {"transformer": {k: v for k, v in dit.to_diffusers().items() if not k.startswith("_")},
            "vae": vae_cfg, "text_encoder": t5_cfg, "scheduler": scheduler}


def _wan_targets(cfgs: dict[str, dict]):
    """The Diffusers/transformers models on the meta device, from ``_wan_target_configs`` ->
    ({component: (shapes, stem, keep_fp32)}, component_files(t5_dtype) -> {relative path: config text}).
    ``component_files`` writes every config file but ``model_index.json`` (see ``_model_index``)."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    # 4. the target models on the meta device: their state dicts are the strict targets
    with torch.device("meta"):
        transformer = WanTransformer3DModel.from_config(cfgs["transformer"])
        vae = AutoencoderKLWan.from_config(cfgs["vae"])
        t5_config = UMT5Config(**cfgs["text_encoder"])
        text_encoder = UMT5EncoderModel(t5_config)
    targets = {
        # (state-dict shapes, weights file stem, keep-in-fp32 module names as the libraries declare them)
        "transformer": (_meta_state_shapes(transformer), WAN_WEIGHT_STEMS["transformer"],
                        tuple(WanTransformer3DModel._keep_in_fp32_modules)),
        # AutoencoderKLWan declares none, but diffusers recommends an fp32 VAE (the Diffusers repos ship it so)
        "vae": (_meta_state_shapes(vae), WAN_WEIGHT_STEMS["vae"], ("*",)),
        "text_encoder": (_meta_state_shapes(text_encoder), WAN_WEIGHT_STEMS["text_encoder"],
                         tuple(UMT5EncoderModel._keep_in_fp32_modules or ())),
    }

    # 5. config files and scheduler
    def component_files(t5_dtype: str) -> dict[str, str]:
        t5_config.architectures = ["UMT5EncoderModel"]
        t5_config.dtype = torch_dtypes()[t5_dtype]
        return {
            "scheduler/scheduler_config.json": UniPCMultistepScheduler(**cfgs["scheduler"]).to_json_string(),
            "transformer/config.json": transformer.to_json_string(),
            "vae/config.json": vae.to_json_string(),
            "text_encoder/config.json": t5_config.to_json_string(),
        }

    return targets, component_files


def _model_index(tokenizer_class: str, diffusers_version: str) -> str:
    """The pipeline index of a WanPipeline repo (plain data: no library needed)."""
    return json.dumps({
        "_class_name": "WanPipeline",
        "_diffusers_version": diffusers_version,
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", tokenizer_class],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }, indent=2) + "\n"


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


def _wan_targets_cached(fam, dit, preset, sources, tok_dir, t5_dtype: Callable[[], str], targets_from: str):
    """The target side from the cheapest place that has it: the family's shipped layouts (the published
    configs, ``porting.layouts``; not with ``targets_from="libraries"``), the ``TargetCache`` memo, else
    diffusers/transformers. -> (targets, make_files, where they came from)."""
    from vidport.porting import layouts

    cfgs = _wan_target_configs(fam, dit, preset, sources)
    tok_class = _tokenizer_class(tok_dir)
    shipped = layouts.lookup(fam, cfgs) if targets_from == "auto" else None
    if shipped is not None:
        return shipped.targets, lambda: {"model_index.json": _model_index(tok_class, shipped.versions["diffusers"]),
                                         **shipped.files(t5_dtype())}, shipped.origin
    key = {"family": fam.NAME, "configs": cfgs, "tokenizer_class": tok_class}
    cache = TargetCache(key, [Path(__file__), Path(fam.__file__)])
    built: list = []

    def build():
        if not built:
            built.append(_wan_targets(cfgs))
        return built[0]

    targets = cache.targets() or build()[0]

    def make_files() -> dict[str, str]:
        dtype = t5_dtype()
        files = cache.files(dtype)
        if files is None:
            files = {"model_index.json": _model_index(tok_class, installed_version("diffusers")),
                     **build()[1](dtype)}
            cache.store(targets, dtype, files)
        return files

    origin = (f"diffusers {installed_version('diffusers')} and transformers {installed_version('transformers')} "
              "(the models built on the meta device)")
    return targets, make_files, origin


def _display_path(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _majority_dtype(comp: ComponentPlan) -> str:
    sizes: dict[str, int] = {}
    for t in comp.tensors:
        sizes[t.dtype] = sizes.get(t.dtype, 0) + t.nbytes
    return max(sizes, key=sizes.get)


def _tokenizer_class(folder: Path) -> str:
    try:
        cls = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, json.JSONDecodeError):
        cls = None
    return cls or "T5TokenizerFast"


RELEASE_PLANNERS: dict[str, Callable[..., ConversionPlan]] = {"wan2.1-t2v": _plan_wan}
