"""State-dict sources: names, shapes and dtypes cheaply; tensors lazily.

A source is opened from a spec string (see ``open_source``):

- a path: ``.safetensors``, ``*.safetensors.index.json``, a ``.pt/.pth/.bin`` pickle (weights only),
  a Diffusers component folder, a Diffusers repo (with ``component``), an official release folder;
- ``hf:ORG/NAME[/SUBFOLDER]``: safetensors headers of a hub repo;
- ``native:FAMILY-PRESET[/COMPONENT]``: the native model on the meta device;
- ``class:MODULE.Class[@CONFIG.json]``: any importable ``nn.Module`` built on the meta device;
- ``keys:FILE.txt``: a key listing (``name<TAB>[shape]`` per line, ``#`` comments);
- ``FILE#PREFIX``: the keys of FILE under a key prefix, one component of a single-file release
  (``release.safetensors#vae.``); a family's release format may point ``--component`` at such a spec.
"""

from __future__ import annotations

import importlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vidport.dtypes import ITEMSIZE, dtype_name, torch_dtypes  # noqa: F401 - re-exported
from vidport.errors import SourceError

if TYPE_CHECKING:
    import torch

@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors spelling: F32, BF16, ... ("?" when unknown)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class StateDictSource:
    """Base class. Subclasses fill ``self._infos`` (ordered) and implement ``get``."""

    description: str = ""

    def __init__(self) -> None:
        self._infos: dict[str, TensorInfo] = {}

    @property
    def infos(self) -> dict[str, TensorInfo]:
        return self._infos

    def keys(self) -> list[str]:
        return list(self._infos)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self._infos.items()}

    def get(self, name: str) -> torch.Tensor:
        raise SourceError(f"{self.description} holds key names only, no tensor data (wanted {name})")

    def stage_on(self, device: torch.device | str) -> None:
        """Optionally move the tensor data to ``device`` ahead of ``get`` calls (a speed hint)."""

    def files(self) -> list[Path]:
        """The files whose bytes this source reads (for provenance records)."""
        return []

    def __len__(self) -> int:
        return len(self._infos)

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)


class PrefixedSource(StateDictSource):
    """The keys of ``inner`` under a leading ``prefix``, names kept as the file spells them: one component
    of a single-file release that stores several under key prefixes (``model.diffusion_model.``,
    ``vae.``). Everything else (tensor reads, byte ranges for kernel copies, streaming pieces, files) is
    the inner source's."""

    def __init__(self, inner: StateDictSource, prefix: str):
        super().__init__()
        self.inner, self.prefix = inner, prefix
        self.description = f"{inner.description}#{prefix}"
        self._infos = {k: v for k, v in inner.infos.items() if k.startswith(prefix)}
        if not self._infos:
            found = sorted({k.split(".")[0] + "." for k in inner.keys()})
            raise SourceError(f"{inner.description}: no tensors under the key prefix {prefix!r} (prefixes there: "
                              f"{', '.join(found[:8])}); is this the right release file for that component?")

    def get(self, name: str) -> torch.Tensor:
        return self.inner.get(name)

    def files(self) -> list[Path]:
        return self.inner.files()

    def __getattr__(self, attr: str):  # locate / copyable / chunks / release / close, where the inner has them
        if attr in ("locate", "copyable", "chunks", "release", "close", "stage_on"):
            return getattr(self.__dict__["inner"], attr)
        raise AttributeError(attr)


def split_prefix_spec(spec: str) -> tuple[str, str | None]:
    """``FILE#PREFIX`` -> (FILE, PREFIX); anything else -> (spec, None)."""
    path, sep, prefix = spec.rpartition("#")
    return (path, prefix) if sep and path and prefix else (spec, None)


# ----------------------------------------------------------------------------------------------
# safetensors
# ----------------------------------------------------------------------------------------------
def pread_full(fd: int, view: memoryview, offset: int) -> bool:
    """Fill ``view`` (bytes) with the file's bytes from ``offset``, reading until full; False when the
    file ends first."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            return False
        done += got
    return True


def read_safetensors_header(path: Path) -> dict:
    """Parse and validate a safetensors header without reading tensor data."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise SourceError(f"{path}: truncated safetensors file ({size} bytes, no header); re-download it")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > 100_000_000:
                raise SourceError(f"{path}: corrupt safetensors header (claims {n} header bytes, file has "
                                  f"{size}); the file is truncated or not safetensors")
            header = json.loads(f.read(n))
    except OSError as e:
        raise SourceError(f"{path}: cannot read ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SourceError(f"{path}: corrupt safetensors header (not JSON); the file is damaged or not safetensors") \
            from None
    if not isinstance(header, dict):
        raise SourceError(f"{path}: corrupt safetensors header (not an object)")
    data_len = size - 8 - n
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = meta["data_offsets"]
            dtype = meta["dtype"]
            _ = meta["shape"]
        except (KeyError, TypeError, ValueError):
            raise SourceError(f"{path}: corrupt safetensors header entry for {name!r}") from None
        if end > data_len or start > end:
            raise SourceError(f"{path}: tensor {name!r} lies past the end of the file (truncated download?)")
        if dtype not in ITEMSIZE:
            raise SourceError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
    return header


class SafetensorsSource(StateDictSource):
    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self.description = str(self.path)
        header = read_safetensors_header(self.path)
        entries = [(k, v) for k, v in header.items() if k != "__metadata__"]
        entries.sort(key=lambda kv: kv[1]["data_offsets"][0])  # file order = writer's key order
        for k, v in entries:
            self._infos[k] = TensorInfo(k, tuple(v["shape"]), v["dtype"])
        self._offsets = {k: tuple(v["data_offsets"]) for k, v in entries}
        self._handle = None
        self._staged: torch.Tensor | None = None  # the data section on a device (stage_on)

    STAGE_CHUNK = 32 << 20  # bytes per pinned staging buffer
    STAGE_SLOTS = 8  # pinned buffers, i.e. reads in flight
    STAGE_READERS = 4  # threads reading the file (pread releases the GIL; one thread reads the page cache
    # at a few GB/s, slower than the host-to-device copy)

    def stage_on(self, device: torch.device | str) -> None:
        """Copy the whole data section to ``device``: reader threads fill pinned buffers in parallel while
        the host-to-device copies of the filled ones run; ``get`` then returns views of it. For fast
        loading straight to a GPU."""
        from concurrent.futures import ThreadPoolExecutor

        import torch

        device = torch.device(device)
        if device.type != "cuda":
            return
        size = self.path.stat().st_size
        with open(self.path, "rb", buffering=0) as f:
            (n,) = struct.unpack("<Q", f.read(8))
            start, data_len = 8 + n, size - 8 - n
            buf = torch.empty(data_len, dtype=torch.uint8, device=device)
            chunks = [(off, min(self.STAGE_CHUNK, data_len - off)) for off in range(0, data_len, self.STAGE_CHUNK)]
            slots = min(self.STAGE_SLOTS, len(chunks))
            size_pinned = min(self.STAGE_CHUNK, max(data_len, 1))  # a small file gets a small buffer
            pinned = [torch.empty(size_pinned, dtype=torch.uint8).pin_memory() for _ in range(slots)]
            copied: list[torch.cuda.Event | None] = [None] * slots
            fd = f.fileno()

            def read(slot: int, off: int, k: int) -> None:
                if not pread_full(fd, memoryview(pinned[slot].numpy())[:k], start + off):
                    raise SourceError(f"{self.path}: file ended early (truncated?)")

            with ThreadPoolExecutor(self.STAGE_READERS) as pool:
                def submit(i: int):
                    slot = i % slots
                    if copied[slot] is not None:
                        copied[slot].synchronize()  # the copy out of this buffer has finished
                    return pool.submit(read, slot, *chunks[i])

                pending = {i: submit(i) for i in range(slots)}
                for i, (off, k) in enumerate(chunks):
                    pending.pop(i).result()
                    slot = i % slots
                    buf[off:off + k].copy_(pinned[slot][:k], non_blocking=True)
                    copied[slot] = torch.cuda.Event()
                    copied[slot].record()
                    if i + slots < len(chunks):
                        pending[i + slots] = submit(i + slots)
        torch.cuda.synchronize(device)
        self._staged = buf

    def get(self, name: str) -> torch.Tensor:
        if name not in self._infos:
            raise SourceError(f"{self.path}: no tensor named {name!r}")
        if self._staged is not None:
            start, end = self._offsets[name]
            info = self._infos[name]
            return self._staged[start:end].view(torch_dtypes()[info.dtype]).view(info.shape)
        if self._handle is None:
            from safetensors import safe_open

            self._handle = safe_open(str(self.path), framework="pt")
        return self._handle.get_tensor(name)

    def files(self) -> list[Path]:
        return [self.path]


class ShardedSafetensorsSource(StateDictSource):
    """A ``*.safetensors.index.json`` and the shards it names."""

    def __init__(self, index_path: str | Path):
        super().__init__()
        self.path = Path(index_path)
        self.description = str(self.path)
        try:
            index = json.loads(self.path.read_text())
            weight_map = index["weight_map"]
        except OSError as e:
            raise SourceError(f"{self.path}: cannot read ({e.strerror})") from None
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SourceError(f"{self.path}: not a safetensors index (needs a 'weight_map' object)") from None
        folder = self.path.parent.resolve()
        self._shards: dict[str, SafetensorsSource] = {}
        self._where: dict[str, str] = {}
        for shard in dict.fromkeys(weight_map.values()):
            shard_path = (folder / shard).resolve()
            if folder not in shard_path.parents:
                raise SourceError(f"{self.path}: shard {shard!r} lies outside its folder; refusing to read it")
            if not shard_path.is_file():
                raise SourceError(f"{self.path}: names shard {shard!r}, which does not exist; "
                                  "re-download the missing file")
            self._shards[shard] = SafetensorsSource(shard_path)
        for name, shard in weight_map.items():
            src = self._shards[shard]
            if name not in src.infos:
                raise SourceError(f"{self.path}: index says {name!r} is in {shard}, but that shard lacks it")
            self._infos[name] = src.infos[name]
            self._where[name] = shard

    def stage_on(self, device: torch.device | str) -> None:
        for shard in self._shards.values():
            shard.stage_on(device)

    def get(self, name: str) -> torch.Tensor:
        return self._shards[self._where[name]].get(name)

    def files(self) -> list[Path]:
        return [self.path] + [s.path for s in self._shards.values()]


# ----------------------------------------------------------------------------------------------
# pickles (weights only)
# ----------------------------------------------------------------------------------------------
def _unloadable(path: Path, e: Exception) -> SourceError:
    """One line for a checkpoint torch's weights-only loader refused. Torch's own advice (``weights_only=False``,
    ``add_safe_globals``) would run the file's code, so it never reaches the user."""
    import re

    from vidport.porting.torchzip import foreign_global

    text = str(e)
    # torch names the refused global for the pickle protocol torch.save writes; our own scan for the others
    named = re.search(r"GLOBAL ([\w.]+)", text)
    name = named[1] if named else foreign_global(path)
    if name:
        return SourceError(f"{path}: not a loadable weights-only tensor checkpoint: its pickle would run {name} "
                           "when loaded (code execution), which vidport refused to run; re-download it from its "
                           "official source, or re-save a copy you trust as a dict of tensors "
                           "(torch.save(model.state_dict(), ...)) or as safetensors")
    unsafe = re.compile(r"weights_only|Weights only load failed|safe_globals\(|trust|file an issue|documentation")
    detail = next((line.strip() for line in text.splitlines() if line.strip() and not unsafe.search(line)),
                  type(e).__name__)
    return SourceError(f"{path}: not a loadable weights-only tensor checkpoint ({detail}); if it is truncated or "
                       "damaged, re-download it; vidport never unpickles arbitrary objects, so re-save other "
                       "pickles as a dict of tensors (torch.save(model.state_dict(), ...))")


class PickleSource(StateDictSource):
    """``.pt/.pth/.bin`` read with ``torch.load(weights_only=True, mmap=True)``: tensors stay on disk."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self.description = str(self.path)
        if not self.path.is_file():
            raise SourceError(f"{self.path}: no such file")
        import torch

        try:
            obj = self._torch_load(mmap=True)
        except RuntimeError as e:
            # legacy (non-zip) pickles cannot be mmap'd
            if "mmap" not in str(e):
                raise _unloadable(self.path, e) from None
            try:
                obj = self._torch_load(mmap=False)
            except Exception as e:  # noqa: BLE001
                raise _unloadable(self.path, e) from None
        except Exception as e:  # noqa: BLE001 - the unpickler raises many types
            raise _unloadable(self.path, e) from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise SourceError(f"{self.path}: holds a {type(obj).__name__}, not a dict of tensors")
        bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise SourceError(f"{self.path}: entry {bad[0]!r} is not a tensor; expected a dict of tensors only")
        self._tensors = obj
        for k, v in obj.items():
            self._infos[k] = TensorInfo(k, tuple(v.shape), dtype_name(v.dtype))

    def _torch_load(self, mmap: bool):
        import warnings

        import torch

        with warnings.catch_warnings():
            # torch's note on a newer pickle protocol asks to file an issue; a refusal gets our one line instead
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(self.path, map_location="cpu", weights_only=True, mmap=mmap)

    def get(self, name: str) -> torch.Tensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise SourceError(f"{self.path}: no tensor named {name!r}") from None

    def files(self) -> list[Path]:
        return [self.path]


# ----------------------------------------------------------------------------------------------
# key listings and modules on the meta device
# ----------------------------------------------------------------------------------------------
class KeysFileSource(StateDictSource):
    """A published key listing: ``name<TAB>[d0, d1, ...]`` per line, ``#`` comments."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self.description = f"keys:{self.path}"
        try:
            lines = self.path.read_text().splitlines()
        except OSError as e:
            raise SourceError(f"{self.path}: cannot read key listing ({e.strerror})") from None
        for lineno, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            try:
                shape = tuple(json.loads(parts[1])) if len(parts) > 1 else ()
            except (json.JSONDecodeError, TypeError):
                raise SourceError(f"{self.path}:{lineno}: expected 'name<TAB>[shape]', got {line!r}") from None
            self._infos[parts[0]] = TensorInfo(parts[0], shape, "?")


class ModuleSource(StateDictSource):
    """Parameters and persistent buffers of an ``nn.Module`` (usually on the meta device)."""

    def __init__(self, module: torch.nn.Module, description: str):
        super().__init__()
        self.module = module
        self.description = description
        sd = module.state_dict(keep_vars=True)
        for k, v in sd.items():
            self._infos[k] = TensorInfo(k, tuple(v.shape), dtype_name(v.dtype))
        self._sd = sd

    def get(self, name: str) -> torch.Tensor:
        t = self._sd[name]
        if t.is_meta:
            raise SourceError(f"{self.description} is built on the meta device; it has no data for {name}")
        return t.detach()


class TensorDictSource(StateDictSource):
    """An in-memory ``{name: tensor}`` dict (tests, small models)."""

    def __init__(self, tensors: dict[str, torch.Tensor], description: str = "<tensors>"):
        super().__init__()
        self.description = description
        self._tensors = tensors
        for k, v in tensors.items():
            self._infos[k] = TensorInfo(k, tuple(v.shape), dtype_name(v.dtype))

    def get(self, name: str) -> torch.Tensor:
        return self._tensors[name]


def build_class(spec: str) -> torch.nn.Module:
    """``MODULE.Class[@CONFIG.json]`` -> an instance on the meta device."""
    import torch

    target, _, config_path = spec.partition("@")
    mod_name, _, cls_name = target.rpartition(".")
    if not mod_name:
        raise SourceError(f"class:{spec}: expected MODULE.Class[@CONFIG.json]")
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError) as e:
        raise SourceError(f"class:{spec}: cannot import {target} ({e})") from None
    config = {}
    if config_path:
        try:
            config = json.loads(Path(config_path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SourceError(f"class:{spec}: cannot read config {config_path} ({e})") from None
    try:
        with torch.device("meta"):
            return _instantiate(cls, config)
    except Exception as e:  # noqa: BLE001 - any constructor failure is the user's spec
        raise SourceError(f"class:{spec}: {cls_name} failed to build from that config "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def _instantiate(cls, config: dict):
    # diffusers models: from_config; transformers models: Config class then Model(config)
    if hasattr(cls, "from_config") and hasattr(cls, "config_name"):
        return cls.from_config({k: v for k, v in config.items()})
    config_class = getattr(cls, "config_class", None)
    if config_class is not None:
        cfg = config_class(**{k: v for k, v in config.items() if not k.startswith("_")})
        return cls(cfg)
    return cls(**{k: v for k, v in config.items() if not k.startswith("_")})


# ----------------------------------------------------------------------------------------------
# directories and the hub
# ----------------------------------------------------------------------------------------------
WEIGHT_FILES = ("diffusion_pytorch_model", "model")


def _weights_in_folder(folder: Path) -> StateDictSource | None:
    for stem in WEIGHT_FILES:
        index = folder / f"{stem}.safetensors.index.json"
        if index.is_file():
            return ShardedSafetensorsSource(index)
        single = folder / f"{stem}.safetensors"
        if single.is_file():
            return SafetensorsSource(single)
    singles = sorted(folder.glob("*.safetensors"))
    if len(singles) == 1:
        return SafetensorsSource(singles[0])
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if len(indexes) == 1:
        return ShardedSafetensorsSource(indexes[0])
    return None


def open_directory(path: Path, component: str | None = None) -> StateDictSource:
    """A Diffusers component folder, a Diffusers repo (``component`` picks one) or an official release."""
    if (path / "model_index.json").is_file():
        if not component:
            comps = sorted(p.name for p in path.iterdir() if p.is_dir() and (p / "config.json").is_file())
            raise SourceError(f"{path} is a Diffusers repo; pick a component with --component "
                              f"({', '.join(comps)})")
        sub = path / component
        if not sub.is_dir():
            raise SourceError(f"{path}: no component folder {component!r}")
        return open_directory(sub)
    from vidport.families import find_official_component

    official = find_official_component(path, component)
    if official is not None:
        return open_source(str(official))
    if component:
        sub = path / component
        if sub.is_dir():
            return open_directory(sub)
    src = _weights_in_folder(path)
    if src is None:
        raise SourceError(f"{path}: no safetensors weights or known release layout found in this folder")
    return src


def open_hub(spec: str) -> StateDictSource:
    """``ORG/NAME[/SUBFOLDER]``: read only the safetensors headers of a hub repo."""
    parts = spec.split("/")
    if len(parts) < 2:
        raise SourceError(f"hf:{spec}: expected hf:ORG/NAME[/SUBFOLDER]")
    repo_id, subfolder = "/".join(parts[:2]), "/".join(parts[2:]) or None
    try:
        files = hub_repo_files(repo_id, what=f"hf:{spec}")
    except HubUnreachable as e:
        fix = ("set HF_HUB_OFFLINE=0 when online, or pre-download it" if e.offline else "pre-download it")
        raise SourceError(f"hf:{spec}: {e.reason}; {fix} with `hf download {repo_id}` and pass its local "
                          "folder instead") from None
    filename = _hub_filename(files, repo_id, subfolder)
    try:
        from huggingface_hub import get_safetensors_metadata

        meta = get_safetensors_metadata(repo_id, filename=filename)
    except Exception as e:  # noqa: BLE001 - offline and HTTP errors come in many types
        raise SourceError(f"hf:{spec}: cannot read the safetensors headers of {filename} from the Hugging Face "
                          f"Hub ({type(e).__name__}); download the repo and pass its local folder instead") from None
    src = StateDictSource()
    src.description = f"hf:{spec}"
    for file_meta in meta.files_metadata.values():
        for name, info in file_meta.tensors.items():
            src._infos[name] = TensorInfo(name, tuple(info.shape), info.dtype)
    return src


def _hub_filename(files: list[str], repo_id: str, subfolder: str | None) -> str:
    prefix = f"{subfolder}/" if subfolder else ""
    for stem in WEIGHT_FILES:
        for suffix in (".safetensors.index.json", ".safetensors"):
            if f"{prefix}{stem}{suffix}" in files:
                return f"{prefix}{stem}{suffix}"
    raise SourceError(f"hf:{repo_id}/{subfolder or ''}: no safetensors weights in that repo folder")


# huggingface_hub's own requests have no timeout and its listing calls retry for ~25 s (a warning per try):
# the first request about a repo gets this many seconds and one try, so no network fails in a second
HUB_TIMEOUT = 3.0


class HubUnreachable(SourceError):
    """The hub cannot be asked about a repo: HF_HUB_OFFLINE is set (``offline``), or no connection."""

    def __init__(self, what: str, reason: str, *, offline: bool):
        super().__init__(f"{what}: {reason}")
        self.reason, self.offline = reason, offline


def hub_repo_files(repo_id: str, *, what: str | None = None) -> list[str]:
    """The file names of hub repo ``repo_id``, from one request that fails fast: ``HubUnreachable`` when
    HF_HUB_OFFLINE is set (at once) or the hub does not answer within ``HUB_TIMEOUT`` (no retries); a
    one-line ``SourceError`` for a missing, private or gated repo. ``what`` starts the messages."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub import errors as hub

    what = what or repo_id
    if constants.HF_HUB_OFFLINE:
        raise HubUnreachable(what, "HF_HUB_OFFLINE is set", offline=True)
    try:
        info = HfApi().model_info(repo_id, timeout=HUB_TIMEOUT)
    except hub.OfflineModeIsEnabled:
        raise HubUnreachable(what, "HF_HUB_OFFLINE is set", offline=True) from None
    except hub.GatedRepoError:
        raise SourceError(f"{what}: a gated repo; accept its license on the Hugging Face hub, then "
                          "`hf auth login`") from None
    except hub.RepositoryNotFoundError:
        raise SourceError(f"{what}: no such repo on the Hugging Face hub, or it is private "
                          "(`hf auth login` for a private one)") from None
    except hub.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status is None or status == 429 or status >= 500:  # the hub is down or busy, not the request wrong
            raise HubUnreachable(what, f"the Hugging Face hub answered HTTP {status or '?'}", offline=False) from None
        raise SourceError(f"{what}: the Hugging Face hub answered HTTP {status}") from None
    except Exception as e:  # noqa: BLE001 - connection errors are requests', httpx' or httpx2's, by hub version
        detail = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise HubUnreachable(what, f"cannot reach the Hugging Face hub ({detail})", offline=False) from None
    return [sibling.rfilename for sibling in info.siblings or ()]


# ----------------------------------------------------------------------------------------------
# the spec parser
# ----------------------------------------------------------------------------------------------
def check_diffusers_repo(path: Path) -> None:
    """A Diffusers-format repo folder whose weight files all have sound safetensors headers (every tensor
    within its file, every shard an index names present), or a one-line ``SourceError`` naming the file.
    Reads headers only; run before any library loads the repo, so a damaged download is bad input, not
    a traceback from deep inside a loader."""
    path = Path(path)
    if not path.is_dir():
        raise SourceError(f"{path}: no such folder; pass a Diffusers-format repo (e.g. written by `port convert`)")
    if not (path / "model_index.json").is_file():
        hint = " (an official release: run `port convert` first)" if (path / "config.json").is_file() else ""
        raise SourceError(f"{path}: no model_index.json; expected a Diffusers-format repo folder{hint}")
    for index in sorted(path.glob("*/*.safetensors.index.json")):
        ShardedSafetensorsSource(index)  # names every missing shard
    for weights in sorted(path.glob("*/*.safetensors")):
        read_safetensors_header(weights)


def open_source(spec: str, component: str | None = None) -> StateDictSource:
    """Open a state-dict source from a spec string (module docstring lists the forms)."""
    if spec.startswith("hf:"):
        return open_hub(spec[3:])
    if spec.startswith("native:"):
        from vidport.families import native_meta_module

        body = spec[len("native:"):]
        name, _, comp = body.partition("/")
        module = native_meta_module(name, comp or component or "transformer")
        return ModuleSource(module, spec)
    if spec.startswith("class:"):
        return ModuleSource(build_class(spec[len("class:"):]), spec)
    if spec.startswith("keys:"):
        return KeysFileSource(spec[len("keys:"):])
    base, prefix = split_prefix_spec(spec)
    if prefix is not None and Path(base).is_file():  # FILE#PREFIX: one component of a single-file release
        return PrefixedSource(open_source(base), prefix)
    path = Path(spec)
    if not path.exists():
        raise SourceError(f"{spec}: no such file or folder (or use a hf:/native:/class:/keys: spec)")
    if path.is_dir():
        return open_directory(path, component)
    name = path.name
    if name.endswith(".safetensors.index.json"):
        return ShardedSafetensorsSource(path)
    if name.endswith(".safetensors"):
        return SafetensorsSource(path)
    if name.endswith((".pt", ".pth", ".bin", ".ckpt")):
        return PickleSource(path)
    if name.endswith(".txt"):
        return KeysFileSource(path)
    raise SourceError(f"{spec}: unknown file type; expected .safetensors, .safetensors.index.json, "
                      ".pt/.pth/.bin or a keys .txt listing")

