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

The family's release format (``porting.release``) says what the release holds and what it becomes;
everything else here is the same for every family.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vidport.porting.namemap import NameMap
from vidport.porting.plan import (
    DTYPES,
    TARGETS_FROM,
    ComponentPlan,
    ConversionPlan,
    DeferredTargets,
    parse_size,
    plan_component,
)
from vidport.porting.provenance import Hasher, installed_version, provenance
from vidport.porting.publish import TMP_TAG, Flusher, disk_full, publish, remove_stale_temps
from vidport.porting.release import ReleaseContents
from vidport.porting.target_cache import TargetCache
from vidport.porting.writer import TensorSink, copy_file, write_component, write_text

from vidport.errors import ConvertError

__all__ = ["DTYPES", "TARGETS_FROM", "ComponentReport", "ConvertError", "execute", "parse_size", "plan_release",
           "summary_table"]


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
    from vidport.families import get_family

    if targets_from not in TARGETS_FROM:
        raise ConvertError(f"--targets {targets_from!r}: choose one of {', '.join(TARGETS_FROM)}")
    if dtype not in DTYPES:
        raise ConvertError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    from vidport.families import family_for_release

    release = Path(release)
    if not release.exists():
        raise ConvertError(f"{release}: no such release folder or file")
    fam = get_family(family_name)
    if not fam.is_official_release(release):
        looks = family_for_release(release)
        if looks is not None:
            raise ConvertError(f"{release} looks like a {looks.name} release, not {fam.name}; "
                               f"pass --family {looks.name}")
        if not release.is_dir():
            if release.suffix == ".safetensors":  # a damaged checkpoint: say what is wrong with it, not only that
                from vidport.porting.sources import read_safetensors_header

                read_safetensors_header(release)
            raise ConvertError(f"{release}: a file that is no {fam.name} release; pass the release folder")
    unknown = sorted(set(maps or {}) - set(fam.components))
    if unknown:
        raise ConvertError(f"--map names unknown component(s) {', '.join(unknown)}; {family_name} has "
                           f"{', '.join(fam.components)}")
    fmt = release_format(fam)
    contents = fmt.read(release)
    hasher = Hasher(contents.files)  # hashing starts now and overlaps everything that follows
    hasher.start()
    try:
        return _plan(fam, fmt, release, contents, hasher, dtype=dtype, max_shard_size=max_shard_size,
                     maps=maps or {}, defer=defer, targets_from=targets_from)
    except BaseException:
        hasher.cancel()
        raise


def release_format(fam):
    """The family's release format module (see ``porting.release``)."""
    return fam.load(fam.release)


def _plan(fam, fmt, release: Path, contents: ReleaseContents, hasher: Hasher, *, dtype: str, max_shard_size: int,
          maps: dict[str, Path], defer: bool, targets_from: str) -> ConversionPlan:
    name_maps = {}
    for name in fmt.COMPONENTS:
        map_path = Path(maps.get(name, fam.official_to_diffusers[name]))
        name_maps[name] = (_load_map(map_path, name), _display_path(map_path))

    def plan_all(targets: dict | None) -> list[ComponentPlan]:
        return [plan_component(name, contents.sources[name], *name_maps[name],
                               targets[name][0] if targets else None, weights_stem=fmt.WEIGHT_STEMS[name],
                               keep_fp32=targets[name][2] if targets else (), dtype=dtype,
                               max_shard_size=max_shard_size) for name in fmt.COMPONENTS]

    def config_dtype(components: list[ComponentPlan]) -> Callable[[], str]:
        return lambda: _majority_dtype(components[fmt.COMPONENTS.index(fmt.CONFIG_DTYPE_COMPONENT)])

    base = dict(family=fam.name, preset=contents.preset, release=release, dtype=dtype,
                max_shard_size=max_shard_size, copies=contents.copies, source_files=contents.files, hasher=hasher)
    if defer and dtype == "keep":  # no cast: dtypes are known without the keep-in-fp32 lists
        components = plan_all(None)
        t_dtype = config_dtype(components)()
        deferred = DeferredTargets(lambda: targets_cached(fam, fmt, contents, lambda: t_dtype, targets_from))
        deferred.start()
        return ConversionPlan(components=components, files={}, deferred=deferred, **base)
    holder: list[list[ComponentPlan]] = []
    targets, make_files, origin = targets_cached(fam, fmt, contents, lambda: config_dtype(holder[0])(),
                                                 targets_from)
    holder.append(plan_all(targets))
    return ConversionPlan(components=holder[0], files=make_files(), targets_origin=origin, **base)


def _load_map(path: Path, component: str) -> NameMap:
    if not Path(path).is_file():
        raise ConvertError(f"the official->Diffusers map for {component} is missing ({path}); write it with "
                           "`port diff-keys --write-map` or pull the committed one")
    return NameMap.load(path)


def targets_cached(fam, fmt, contents: ReleaseContents, config_dtype: Callable[[], str], targets_from: str):
    """The target side from the cheapest place that has it: the family's shipped layouts (the published
    configs, ``porting.layouts``; not with ``targets_from="libraries"``), the ``TargetCache`` memo, else
    diffusers/transformers. -> (targets, make_files, where they came from)."""
    from vidport.porting import layouts

    cfgs = fmt.target_configs(contents)
    tok_class = contents.tokenizer_class
    shipped = layouts.lookup(fam, cfgs) if targets_from == "auto" else None
    if shipped is not None:
        return shipped.targets, lambda: {"model_index.json": fmt.model_index(tok_class, shipped.versions["diffusers"]),
                                         **shipped.files(config_dtype())}, shipped.origin
    key = {"family": fam.name, "configs": cfgs, "tokenizer_class": tok_class}
    cache = TargetCache(key, [Path(fmt.__file__), Path(__file__)])
    built: list = []

    def build():
        if not built:
            built.append(fmt.build_targets(cfgs))
        return built[0]

    targets = cache.targets() or build()[0]

    def make_files() -> dict[str, str]:
        dtype = config_dtype()
        files = cache.files(dtype)
        if files is None:
            files = {"model_index.json": fmt.model_index(tok_class, installed_version("diffusers")),
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
    out = Path(out).absolute()
    tmp = _temporary_folder(cplan, out, force, log)
    hasher = cplan.hasher if cplan.hasher is not None else Hasher(cplan.source_files)
    if hasher.ident is None:  # not started yet
        hasher.start()
    reports: list[ComponentReport] = []
    flusher = Flusher()
    flusher.start()
    where = [str(tmp)]  # what is being written, for the error message
    # The target check (imports of diffusers/transformers) runs Python on another thread while this one
    # issues a syscall per tensor; each return from a syscall waits for the GIL up to the switch interval
    # (5 ms by default): 0.1 ms keeps the ~800 small tensors of a DiT from waiting seconds in all.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, 1e-4))
    try:
        reports += _write_weights(cplan, tmp, progress, flusher, where)
        reports += _write_rest(cplan, tmp, out, hasher, flusher, force, where)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full(e):
            raise ConvertError(f"disk full while writing {where[0]} (needs {_human(cplan.nbytes)} in all); {out} "
                               "is untouched and the temporary folder was removed") from None
        raise ConvertError(f"cannot write {where[0]}: {e.strerror or e}; {out} is untouched") from None
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


def _temporary_folder(cplan: ConversionPlan, out: Path, force: bool, log: Callable[[str], None]) -> Path:
    """Check the target and the free space, remove stale temporary folders, make this run's one."""
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
    return tmp


def _write_weights(cplan: ConversionPlan, tmp: Path, progress: bool, flusher: Flusher,
                   where: list[str]) -> list[ComponentReport]:
    from tqdm import tqdm

    reports = []
    sink = TensorSink()
    bar = tqdm(total=sum(c.nbytes for c in cplan.components), unit="B", unit_scale=True, unit_divisor=1024,
               desc="convert", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    with bar:
        for comp in cplan.components:
            t0 = time.perf_counter()
            bar.set_description(comp.name)
            where[0] = f"{tmp / comp.name}"
            write_component(comp, tmp / comp.name, sink, bar.update, flusher.add)
            reports.append(ComponentReport(comp.name, len(comp.tensors), comp.nbytes, _dtype_summary(comp),
                                           time.perf_counter() - t0))
            if cplan.deferred is not None and not cplan.deferred.is_alive():
                cplan.complete()  # the target check is done: fail now rather than after all components
    return reports


def _write_rest(cplan: ConversionPlan, tmp: Path, out: Path, hasher: Hasher, flusher: Flusher, force: bool,
                where: list[str]) -> list[ComponentReport]:
    """The strict check, config files and copies, conversion.json, then fsync and the atomic rename."""
    t0 = time.perf_counter()
    cplan.complete()  # strict check against the target models before anything is published
    for rel, text in cplan.files.items():
        where[0] = rel
        write_text(tmp / rel, text)
    for rel, src in cplan.copies.items():
        where[0] = rel
        copy_file(src, tmp / rel)
    extra = sum(len(t.encode()) for t in cplan.files.values()) + sum(p.stat().st_size for p in cplan.copies.values())
    reports = [ComponentReport("configs+checks", 0, extra, "-", time.perf_counter() - t0)]
    t0 = time.perf_counter()
    hasher.join()  # what is left of hashing the sources (it started during planning)
    if hasher.error is not None:
        raise ConvertError(f"cannot hash the source files: {hasher.error}")
    write_text(tmp / "conversion.json", json.dumps(provenance(cplan, hasher.result), indent=2) + "\n")
    reports.append(ComponentReport("sha256 (wait)", 0, 0, "-", time.perf_counter() - t0))
    t0 = time.perf_counter()
    where[0] = str(out)
    flusher.finish()
    publish(tmp, out, force)
    reports.append(ComponentReport("fsync+rename", 0, 0, "-", time.perf_counter() - t0))
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
