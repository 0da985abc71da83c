"""The conversion plan: every target tensor with its source op, output dtype, shard and order, checked
strictly against the target layout before a byte is written."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vidport.porting.namemap import NameMap, Op, Plan
from vidport.porting.sources import StateDictSource

from vidport.dtypes import FLOATING, ITEMSIZE
from vidport.errors import ConvertError, UserError

if TYPE_CHECKING:
    from vidport.porting.provenance import Hasher


# --dtype -> safetensors dtype name. Planning and kernel copies run without torch: it is imported only
# where tensor values are needed (casts, merges/splits, tensors of a checkpoint torch must unpickle).
DTYPES: dict[str, str | None] = {"keep": None, "bf16": "BF16", "fp16": "F16", "fp32": "F32"}
TARGETS_FROM = ("auto", "libraries")  # --targets: where the strict target layout comes from


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


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


