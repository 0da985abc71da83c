"""The tensor table of a PyTorch zip checkpoint (``torch.save``, the ``.pth`` files of an official
release), read without torch: names, shapes, dtypes and where each tensor's bytes lie in the file.

`port convert` copies an unchanged tensor of a checkpoint like one of a safetensors file: in the kernel
(``copy_file_range``), from its byte range. The official umT5-xxl encoder is an 11 GB pickle, so this is
where most of a real release's bytes go.

Safe by construction: the pickle is read by an unpickler that resolves only the names a state dict of
tensors uses (``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``, the typed storage
classes, ``_rebuild_parameter``) to inert stand-ins; anything else stops it. What it cannot describe exactly (a legacy
non-zip pickle, a compressed entry, a big-endian file, a nested or non-tensor entry, an unknown name)
gives ``None``, and the caller falls back to ``torch.load(weights_only=True, mmap=True)``, which also
writes the error for a damaged file.
"""

from __future__ import annotations

import math
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from vidport.dtypes import ITEMSIZE

# torch.<X>Storage, as torch.save pickles a typed storage -> safetensors dtype name
STORAGE_DTYPES = {
    "DoubleStorage": "F64", "FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
    "ByteStorage": "U8", "BoolStorage": "BOOL",
}


@dataclass(frozen=True)
class ZipTensor:
    shape: tuple[int, ...]
    dtype: str  # safetensors spelling
    offset: int  # absolute file offset of the first element
    nbytes: int
    contiguous: bool  # the elements lie in [offset, offset + nbytes) in row-major order


class _Unsupported(Exception):
    pass


class _ForeignGlobal(_Unsupported):
    """The pickle imports a name no dict of tensors uses (``posix.system``, say)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass(frozen=True)
class _Storage:
    dtype: str
    key: str
    numel: int


@dataclass(frozen=True)
class _Tensor:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage) or not all(isinstance(x, int) for x in (storage_offset, *size, *stride)):
        raise _Unsupported("tensor arguments")
    return _Tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, _Tensor):
        raise _Unsupported("parameter arguments")
    return data


class _TableUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise _ForeignGlobal(f"{module}.{name}")

    def persistent_load(self, pid):
        if (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
                and isinstance(pid[4], int)):
            return _Storage(STORAGE_DTYPES[pid[1].name], str(pid[2]), pid[4])
        raise _Unsupported(f"persistent id {pid!r:.80}")


def _contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expect = 1
    for size, st in zip(reversed(shape), reversed(stride)):
        if size != 1 and st != expect:
            return False
        expect *= size
    return True


def _data_offset(f, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start: after its local header (whose extra field may differ from the
    central directory's)."""
    f.seek(info.header_offset)
    header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise _Unsupported("local header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _data_pkl(zf: zipfile.ZipFile) -> str | None:
    pkl = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    return pkl[0] if len(pkl) == 1 else None


def foreign_global(path: Path) -> str | None:
    """The first name the pickle of a zip checkpoint imports that a dict of tensors never uses (``posix.system``,
    say), or None. The table reader stops at that name before anything is called, so this is safe on any file;
    it names what ``torch.load`` refused where torch's error does not (a pickle of protocol 4 or later)."""
    try:
        with zipfile.ZipFile(path) as zf:
            pkl = _data_pkl(zf)
            if pkl is None:
                return None
            _TableUnpickler(zf.open(pkl)).load()
    except _ForeignGlobal as e:
        return e.name
    except Exception:  # noqa: BLE001 - any other stop means no foreign name was reached
        return None
    return None


def read_table(path: Path) -> dict[str, ZipTensor] | None:
    """{name: ZipTensor} of a ``torch.save``'d flat dict of tensors, or None (see the module doc)."""
    try:
        with open(path, "rb") as f, zipfile.ZipFile(f) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            pkl = _data_pkl(zf)
            if pkl is None:
                return None
            prefix = pkl[: -len("data.pkl")]
            order = infos.get(prefix + "byteorder")
            if order is not None and zf.read(order).strip() != b"little":
                return None
            obj = _TableUnpickler(zf.open(pkl)).load()
            if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, _Tensor)
                                                    for k, v in obj.items()):
                return None
            table = {}
            starts: dict[str, tuple[int, int]] = {}
            for name, t in obj.items():
                member = infos.get(f"{prefix}data/{t.storage.key}")
                if member is None or member.compress_type != zipfile.ZIP_STORED:
                    return None
                if t.storage.key not in starts:
                    starts[t.storage.key] = (_data_offset(f, member), member.file_size)
                start, size = starts[t.storage.key]
                item = ITEMSIZE[t.storage.dtype]
                numel = math.prod(t.shape)
                lo, nbytes = t.offset * item, numel * item
                contiguous = _contiguous(t.shape, t.stride)
                if t.offset < 0 or min(t.shape, default=1) < 0 or (contiguous and numel and lo + nbytes > size):
                    return None
                table[name] = ZipTensor(t.shape, t.storage.dtype, start + lo, nbytes, contiguous)
            return table
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, _Unsupported, EOFError, ValueError, TypeError,
            KeyError, IndexError, AttributeError, struct.error):
        return None
